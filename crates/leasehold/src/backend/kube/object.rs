//! What every Kubernetes lock shares: one named object read and written as raw JSON, with
//! compare-and-swap on `resourceVersion`, a watch on its name, and Events about it. Where the
//! record lives in the object (a Lease's `spec`, an annotation) is the [`Kind`]'s business.

use super::{annotation, lease, map_error};
use futures_util::{StreamExt as _, stream};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{ConfigMap, Endpoints, Event, EventSource, ObjectReference},
};
use kube::{
    Api,
    api::{ApiResource, DynamicObject, PostParams, WatchEvent, WatchParams},
};
use leasehold_core::{
    LeaderRecord, LockError, LockEvent, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};
use serde_json::{Map, Value};
use std::sync::{Arc, Mutex};

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

    fn decode(self, obj: &DynamicObject) -> Result<LeaderRecord, leasehold_core::RecordError> {
        match self {
            Self::Lease => lease::spec_to_record(obj.data.get("spec")),
            Self::ConfigMap | Self::Endpoints => {
                annotation::read(obj.metadata.annotations.as_ref())
            }
        }
    }

    fn encode(self, record: &LeaderRecord, obj: &mut DynamicObject) {
        match self {
            Self::Lease => {
                if !obj.data.is_object() {
                    obj.data = Value::Object(Map::new());
                }
                if let Some(data) = obj.data.as_object_mut() {
                    let spec = data
                        .entry("spec")
                        .or_insert_with(|| Value::Object(Map::new()));
                    if !spec.is_object() {
                        *spec = Value::Object(Map::new());
                    }
                    if let Some(spec) = spec.as_object_mut() {
                        lease::record_into_spec(record, spec);
                    }
                }
            }
            Self::ConfigMap | Self::Endpoints => {
                annotation::write(record, obj.metadata.annotations.get_or_insert_default());
            }
        }
    }
}

/// A lock on one named object of a [`Kind`].
#[derive(Clone)]
pub(crate) struct ObjectLock {
    api: Api<DynamicObject>,
    events: Option<Api<Event>>,
    client: kube::Client,
    kind: Kind,
    name: String,
    namespace: String,
    /// The last object seen, to build updates from (keeps every other field).
    last: Arc<Mutex<Option<DynamicObject>>>,
}

// === impl ObjectLock ===

impl ObjectLock {
    pub(crate) fn new(client: kube::Client, kind: Kind, namespace: &str, name: &str) -> Self {
        Self {
            api: Api::namespaced_with(client.clone(), namespace, &kind.api_resource()),
            events: None,
            client,
            kind,
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            last: Arc::default(),
        }
    }

    pub(crate) fn with_events(mut self, on: bool) -> Self {
        self.events = on.then(|| Api::namespaced(self.client.clone(), &self.namespace));
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

    fn decode(&self, obj: &DynamicObject) -> Result<Versioned, LockError> {
        let version = obj.metadata.resource_version.clone().unwrap_or_default();
        let record = self.kind.decode(obj).map_err(|source| LockError::Corrupt {
            object: self.describe(),
            version: Some(Version::new(version.clone())),
            source,
        })?;
        Ok(Versioned {
            record,
            version: Version::new(version),
        })
    }

    /// Keeps `obj` to build the next update from (moved, not copied: a renewal allocates as
    /// little as it can, which is most of its cost at thousands of elections per process).
    fn remember(&self, mut obj: DynamicObject) {
        // Not needed to build an update (an update that omits them keeps them on the server),
        // and most of the object's size.
        obj.metadata.managed_fields = None;
        if let Ok(mut last) = self.last.lock() {
            *last = Some(obj);
        }
    }

    async fn base_object(&self, version: &Version) -> Result<DynamicObject, LockError> {
        // Taken out of the cache: the update's answer replaces it (a failed update reads again).
        let cached = self.last.lock().ok().and_then(|mut l| l.take());
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

    pub(crate) fn describe(&self) -> String {
        format!("{} {}/{}", self.kind.noun(), self.namespace, self.name)
    }

    pub(crate) fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(async move {
            let obj = self
                .api
                .get_opt(&self.name)
                .await
                .map_err(|e| self.err(e, "get", "get"))?;
            match obj {
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
        let record = record.clone();
        Box::pin(async move {
            let mut obj =
                DynamicObject::new(&self.name, &self.kind.api_resource()).within(&self.namespace);
            obj.data = Value::Object(Map::new());
            self.kind.encode(&record, &mut obj);
            let created = self
                .api
                .create(&PostParams::default(), &obj)
                .await
                .map_err(|e| self.err(e, "create", "create"))?;
            let version = Version::new(
                created
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default(),
            );
            self.remember(created);
            Ok(version)
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
            let mut obj = self.base_object(&version).await?;
            self.kind.encode(&record, &mut obj);
            obj.metadata.resource_version = Some(version.0.to_string());
            let stored = self
                .api
                .replace(&self.name, &PostParams::default(), &obj)
                .await
                .map_err(|e| self.err(e, "update", "update"))?;
            let version =
                Version::new(stored.metadata.resource_version.clone().unwrap_or_default());
            self.remember(stored);
            Ok(version)
        })
    }

    pub(crate) fn watch(&self, version: Option<&Version>) -> WatchStream {
        type Events = std::pin::Pin<
            Box<dyn futures_util::Stream<Item = kube::Result<WatchEvent<DynamicObject>>> + Send>,
        >;
        enum St {
            Start(ObjectLock, String),
            Running(ObjectLock, Events),
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
                .and_then(|l| l.as_ref().and_then(|o| o.metadata.uid.clone()));
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
        }
    };
}
pub(crate) use delegate_lock_backend;
