//! Kubernetes backends (feature `kube`): the `coordination.k8s.io/v1` Lease lock, the legacy
//! ConfigMap/Endpoints annotation locks, the [`MultiLock`] that migrates between them, and the
//! client configuration rules every Kubernetes lock shares.

mod annotation;
mod http2;
mod kubeconfig;
mod lease;
mod multi;
mod object;
mod tcp;
mod wire;
mod yaml;

pub use annotation::{AnnotationLock, LEADER_ANNOTATION};
pub use kubeconfig::{KubeconfigError, read_from as read_kubeconfig};
pub use lease::{LeaseLock, lease_spec_to_record, record_to_lease_spec};
pub use multi::{MultiLock, UNKNOWN_LEADER};
pub use yaml::YamlError;

use leasehold_core::{
    LeaderRecord, LockBackend, LockError, LockEvent, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};

/// Which Kubernetes object holds the record: client-go's lock types, by the same names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LockType {
    /// `leases`: a `coordination.k8s.io/v1` Lease (the default, and client-go's only one today).
    #[default]
    Leases,
    /// `configmaps`: an annotation on a ConfigMap (client-go ≤ 1.23).
    ConfigMaps,
    /// `endpoints`: an annotation on an Endpoints object (client-go ≤ 1.23, seed 002).
    Endpoints,
    /// `configmapsleases`: ConfigMap primary and Lease secondary, to migrate to Leases.
    ConfigMapsLeases,
    /// `endpointsleases`: Endpoints primary and Lease secondary, to migrate to Leases.
    EndpointsLeases,
}

/// An unknown lock type name.
#[derive(Debug, thiserror::Error)]
#[error(
    "unknown lock type `{0}` (expected leases, configmaps, endpoints, configmapsleases or endpointsleases)"
)]
pub struct UnknownLockType(pub String);

// === impl LockType ===

impl std::str::FromStr for LockType {
    type Err = UnknownLockType;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s {
            "leases" => Self::Leases,
            "configmaps" => Self::ConfigMaps,
            "endpoints" => Self::Endpoints,
            "configmapsleases" => Self::ConfigMapsLeases,
            "endpointsleases" => Self::EndpointsLeases,
            other => return Err(UnknownLockType(other.to_owned())),
        })
    }
}

impl std::fmt::Display for LockType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Leases => "leases",
            Self::ConfigMaps => "configmaps",
            Self::Endpoints => "endpoints",
            Self::ConfigMapsLeases => "configmapsleases",
            Self::EndpointsLeases => "endpointsleases",
        })
    }
}

/// Any Kubernetes lock, chosen at run time by [`LockType`].
///
/// Replaces client-go's `resourcelock.New(lockType, ...)`.
#[derive(Clone)]
#[doc(alias = "New")]
pub enum KubeLock {
    /// A Lease.
    Lease(LeaseLock),
    /// A ConfigMap or Endpoints annotation.
    Annotation(AnnotationLock),
    /// An annotation lock (primary) and a Lease (secondary) together.
    Multi(Box<MultiLock<AnnotationLock, LeaseLock>>),
}

// === impl KubeLock ===

impl KubeLock {
    /// The lock of `lock_type` named `namespace/name` (both objects of a multi-lock share the
    /// name, as in client-go).
    pub fn new(
        client: impl Into<ApiClient>,
        lock_type: LockType,
        namespace: &str,
        name: &str,
    ) -> Self {
        let client = client.into();
        let lease = || LeaseLock::new(client.clone(), namespace, name);
        let cm = || AnnotationLock::config_map(client.clone(), namespace, name);
        let ep = || AnnotationLock::endpoints(client.clone(), namespace, name);
        match lock_type {
            LockType::Leases => Self::Lease(lease()),
            LockType::ConfigMaps => Self::Annotation(cm()),
            LockType::Endpoints => Self::Annotation(ep()),
            LockType::ConfigMapsLeases => Self::Multi(Box::new(MultiLock::new(cm(), lease()))),
            LockType::EndpointsLeases => Self::Multi(Box::new(MultiLock::new(ep(), lease()))),
        }
    }

    /// Records an Event on the lock object(s) at every acquisition and loss. Best effort.
    #[must_use]
    pub fn with_events(self, on: bool) -> Self {
        match self {
            Self::Lease(l) => Self::Lease(l.with_events(on)),
            Self::Annotation(l) => Self::Annotation(l.with_events(on)),
            Self::Multi(m) => Self::Multi(Box::new(MultiLock::new(
                m.primary().clone().with_events(on),
                m.secondary().clone().with_events(on),
            ))),
        }
    }

    fn inner(&self) -> &dyn LockBackend {
        match self {
            Self::Lease(l) => l,
            Self::Annotation(l) => l,
            Self::Multi(m) => m.as_ref(),
        }
    }
}

impl LockBackend for KubeLock {
    fn describe(&self) -> String {
        self.inner().describe()
    }
    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        self.inner().get()
    }
    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        self.inner().create(record)
    }
    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        self.inner().update(record, version)
    }
    fn watch(&self, version: Option<&Version>) -> WatchStream {
        self.inner().watch(version)
    }
    fn record_event(&self, event: &LockEvent) -> BoxFuture<'_, Result<(), LockError>> {
        self.inner().record_event(event)
    }
}

use std::path::{Path, PathBuf};

/// Where the service-account namespace is mounted in a Pod.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Why a Kubernetes client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// A kubeconfig file (named by `--kubeconfig` or `KUBECONFIG`) could not be used.
    #[error("kubeconfig {path}")]
    Kubeconfig {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: KubeconfigError,
    },
    /// No kubeconfig was usable and the process is not in a cluster.
    #[error("no usable Kubernetes client configuration: {kubeconfig}; and not in a cluster")]
    Infer {
        /// Why no kubeconfig was used.
        kubeconfig: String,
        /// Why the in-cluster configuration failed.
        #[source]
        in_cluster: kube::config::InClusterError,
    },
    /// The client could not be built from the configuration.
    #[error("cannot build a Kubernetes client")]
    Build(#[source] kube::Error),
}

/// The client the Kubernetes locks send their requests with.
///
/// Built by [`client`] or [`client_from_config`], it sends a lock's reads, writes and watches
/// over leasehold's own HTTP/2 connection to the API server (`http2`, which says why: at
/// thousands of elections per process the request path is most of the cost of leading), and
/// everything else (Events, Pod labels) through the [`kube::Client`] it also holds. Made from a
/// [`kube::Client`] (`From`), as an operator that already has one does, every request goes
/// through that client.
///
/// The two paths share the configuration (TLS, client certificates, tokens, exec plugins,
/// impersonation); with a server that does not agree to HTTP/2, a plain-`http` cluster URL or a
/// proxy, everything goes through kube's client.
#[derive(Clone)]
pub struct ApiClient {
    kube: kube::Client,
    direct: Option<http2::Http2>,
}

impl From<kube::Client> for ApiClient {
    fn from(kube: kube::Client) -> Self {
        Self { kube, direct: None }
    }
}

impl From<ApiClient> for kube::Client {
    fn from(c: ApiClient) -> Self {
        c.kube
    }
}

// === impl ApiClient ===

impl ApiClient {
    /// The kube client, for requests of your own.
    pub fn kube(&self) -> &kube::Client {
        &self.kube
    }

    /// Whether lock requests take leasehold's own HTTP/2 path (false when made from a
    /// [`kube::Client`], or once the server has refused HTTP/2).
    pub fn is_direct(&self) -> bool {
        self.direct.as_ref().is_some_and(http2::Http2::usable)
    }

    fn direct(&self) -> Option<&http2::Http2> {
        self.direct.as_ref().filter(|d| d.usable())
    }

    /// Sends `req` and decodes its JSON answer.
    pub(crate) async fn request<T: serde::de::DeserializeOwned>(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<T, kube::Error> {
        let req = match self.direct() {
            None => req,
            Some(d) => match d.request(req).await {
                Err(http2::Failure::NotHttp2(req)) => req,
                Err(http2::Failure::Kube(e)) => return Err(e),
                Ok(v) => return Ok(v),
            },
        };
        self.kube.request(req).await
    }

    /// Starts the watch `req`.
    pub(crate) async fn events<T: serde::de::DeserializeOwned + Clone + Send + 'static>(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<
        futures_util::stream::BoxStream<'static, kube::Result<kube::api::WatchEvent<T>>>,
        kube::Error,
    > {
        use futures_util::StreamExt as _;
        let req = match self.direct() {
            None => req,
            Some(d) => match d.events::<T>(req).await {
                Err(http2::Failure::NotHttp2(req)) => req,
                Err(http2::Failure::Kube(e)) => return Err(e),
                Ok(s) => return Ok(s.boxed()),
            },
        };
        Ok(self.kube.request_events::<T>(req).await?.boxed())
    }
}

/// Builds a client: `kubeconfig` if given, else the files in `KUBECONFIG` (merged, the first
/// to set a value wins; missing ones skipped, as kubectl does), else `~/.kube/config`, else the
/// in-cluster service account.
///
/// Kubeconfig files are read by leasehold's own YAML reader (`yaml`, which says why), strictly:
/// anchors, tags and duplicate keys are errors that name the line. kube-rs's
/// `KUBE_RS_DEBUG_*` overrides apply when no file is named, as with `kube::Config::infer`.
///
/// kube's own retry layer is turned off: it retries 429/5xx with backoffs that could outlast a
/// renew deadline. The elector retries itself, under a deadline per request.
///
/// # Errors
/// A [`ClientError`] naming what could not be read.
pub async fn client(kubeconfig: Option<&Path>) -> Result<ApiClient, ClientError> {
    let options = kube::config::KubeConfigOptions::default();
    let config = match kubeconfig {
        Some(path) => {
            let wrap = |source| ClientError::Kubeconfig {
                path: path.to_owned(),
                source,
            };
            let kc = kubeconfig::read_from(path)
                .and_then(with_context)
                .map_err(wrap)?;
            kube::Config::from_custom_kubeconfig(kc, &options)
                .await
                .map_err(|e| wrap(e.into()))?
        }
        None => {
            let paths = kubeconfig::default_paths();
            let mut config = if paths.is_empty() {
                kube::Config::incluster().map_err(|in_cluster| ClientError::Infer {
                    kubeconfig: "found no kubeconfig file (in KUBECONFIG or at ~/.kube/config)"
                        .to_owned(),
                    in_cluster,
                })?
            } else {
                // A kubeconfig that exists but cannot be used is an error, as with kubectl and
                // client-go: falling back to the Pod's service account would run with other
                // credentials than the ones the user chose.
                let kc = kubeconfig::read_merged(&paths)
                    .map_err(|(path, source)| ClientError::Kubeconfig { path, source })?;
                let wrap = |source| ClientError::Kubeconfig {
                    path: PathBuf::from(list(&paths)),
                    source,
                };
                let kc = with_context(kc).map_err(wrap)?;
                kube::Config::from_custom_kubeconfig(kc, &options)
                    .await
                    .map_err(|e| wrap(e.into()))?
            };
            config.apply_debug_overrides();
            config
        }
    };
    client_from_config(config)
}

/// A kubeconfig without a current context names no server: say so, rather than kube-rs's
/// "failed to determine current context".
fn with_context(kc: kube::config::Kubeconfig) -> Result<kube::config::Kubeconfig, KubeconfigError> {
    if kc.current_context.as_deref().is_none_or(str::is_empty) {
        let empty = kc.contexts.is_empty() && kc.clusters.is_empty() && kc.auth_infos.is_empty();
        return Err(KubeconfigError::NoCurrentContext(empty));
    }
    Ok(kc)
}

fn list(paths: &[PathBuf]) -> String {
    let names: Vec<String> = paths.iter().map(|p| p.display().to_string()).collect();
    names.join(", ")
}

/// Builds a client from a [`kube::Config`] the way leasehold needs it: the locks' requests on
/// leasehold's own HTTP/2 connection (see [`ApiClient`]), and a [`kube::Client`] for the rest,
/// built as follows.
///
/// - **HTTP/1.1 only.** The lock's watch and writes share leasehold's own HTTP/2 connection,
///   which the watch keeps warm, so a standby's takeover write goes out on a live connection.
///   What is left for this client (Events, Pod labels, and everything when the server refuses
///   HTTP/2) gains nothing from HTTP/2, and a second HTTP/2 client would add about 140 KB to
///   the sidecar, which is resident memory (docs/benchmarks.md).
/// - **No idle expiry** of pooled connections: a write after a quiet spell reuses one when it
///   can.
/// - **No retry layer**: kube's retries 429/5xx with backoffs that could outlast a renew
///   deadline; the elector retries itself, under a deadline per request.
///
/// Authentication, the base URI and impersonation headers come from the config as in kube's
/// own builder.
///
/// # Errors
/// [`ClientError::Build`] when the TLS or auth configuration is unusable.
pub fn client_from_config(config: kube::Config) -> Result<ApiClient, ClientError> {
    use kube::client::ConfigExt as _;
    use std::time::Duration;
    use tower::ServiceBuilder;

    let direct = http2::Http2::new(&config).map_err(ClientError::Build)?;

    let tls = config.rustls_client_config().map_err(ClientError::Build)?;
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout.or(Some(Duration::from_secs(10))));
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(tls)
        .https_or_http()
        .enable_http1()
        .wrap_connector(http);
    let hyper = hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(None)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer().map_err(ClientError::Build)?)
        .layer(config.extra_headers_layer().map_err(ClientError::Build)?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(ApiClient {
        kube: kube::Client::new(service, config.default_namespace),
        direct,
    })
}

/// The namespace a lock lives in when none is given: the Pod's own (from the service-account
/// mount), else `default`.
pub fn default_namespace() -> String {
    std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE)
        .ok()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".to_owned())
}

/// An error answer of the API server, in one line (kube's own `Display` of it repeats the
/// message and dumps the whole `Status`).
#[derive(Debug, thiserror::Error)]
#[error("API server answered {code} {reason}: {message}")]
pub struct ApiStatus {
    /// HTTP status code.
    pub code: u16,
    /// The `Status` reason (`Forbidden`, `Conflict`, `TooManyRequests`, ...).
    pub reason: String,
    /// The `Status` message.
    pub message: String,
}

/// Maps a kube error to the lock contract's kinds. `verb` and `resource` name what a 403 denied.
pub(crate) fn map_error(
    e: kube::Error,
    op: &'static str,
    verb: &'static str,
    resource: &str,
    object: String,
) -> leasehold_core::LockError {
    use leasehold_core::LockError;
    match e {
        kube::Error::Api(status) => {
            let api = ApiStatus {
                code: status.code,
                reason: status.reason.clone(),
                message: status.message.clone(),
            };
            match status.code {
                409 => LockError::Conflict { op, object },
                404 if op == "update" => LockError::Conflict { op, object },
                403 => LockError::Forbidden {
                    verb,
                    resource: resource.to_owned(),
                    object,
                },
                401 => LockError::Other {
                    op,
                    object,
                    message: "unauthorized: the API server rejected the credentials".into(),
                    source: Some(Box::new(api)),
                },
                // 410 Gone: a watch's version is too old; the caller reads and watches again.
                410 | 429 | 500..=599 => LockError::Unavailable {
                    op,
                    object,
                    source: Box::new(api),
                },
                code => LockError::Other {
                    op,
                    object,
                    message: format!("API server answered {code}"),
                    source: Some(Box::new(api)),
                },
            }
        }
        other => LockError::Unavailable {
            op,
            object,
            source: Box::new(other),
        },
    }
}

/// Sets the label `key` of the Pod `namespace/pod` to `value` with a JSON patch, as seed 003's
/// sidecar labels its Pod `k8s-elector/status: leader|standby`. A Service that selects on the
/// label then routes to the leader alone.
///
/// Needs `patch` on `pods` (`get` is not needed).
///
/// # Errors
/// A [`LockError`] naming the Pod (`Forbidden` names the verb and resource).
pub async fn set_pod_label(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    key: &str,
    value: &str,
) -> Result<(), LockError> {
    let object = format!("pod {namespace}/{pod}");
    // JSON pointer escaping (RFC 6901): `~` → `~0`, `/` → `~1`.
    let path = format!(
        "/metadata/labels/{}",
        key.replace('~', "~0").replace('/', "~1")
    );
    let one = serde_json::json!([{ "op": "add", "path": path, "value": value }]);
    match json_patch(client, namespace, pod, &one).await {
        // No `metadata.labels` map yet: add the whole map.
        Err(kube::Error::Api(s)) if s.code == 422 || s.code == 500 => {
            let all = serde_json::json!([
                { "op": "add", "path": "/metadata/labels", "value": { key: value } }
            ]);
            json_patch(client, namespace, pod, &all)
                .await
                .map_err(|e| map_error(e, "patch", "patch", "pods", object))
        }
        r => r.map_err(|e| map_error(e, "patch", "patch", "pods", object)),
    }
}

async fn json_patch(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    patch: &serde_json::Value,
) -> Result<(), kube::Error> {
    let req = http::Request::patch(format!("/api/v1/namespaces/{namespace}/pods/{pod}"))
        .header(http::header::CONTENT_TYPE, "application/json-patch+json")
        .body(serde_json::to_vec(patch).unwrap_or_default())
        .map_err(kube::Error::HttpError)?;
    client.request_text(req).await.map(|_| ())
}
