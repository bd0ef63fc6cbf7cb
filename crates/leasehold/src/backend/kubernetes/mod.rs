//! Kubernetes backends (feature `kube`): the `coordination.k8s.io/v1` Lease lock, the legacy
//! ConfigMap/Endpoints annotation locks, the [`MultiLock`] that migrates between them, and the
//! client configuration rules every Kubernetes lock shares.
//!
//! # Your client, your choices
//! A lock made from your `kube::Client` sends every request through it: its authentication,
//! proxy, TLS settings, timeouts and tower layers. leasehold picks no Kubernetes API version
//! (k8s-openapi feature), no TLS stack and no crypto provider; your application does, as for
//! kube itself:
//!
//! ```toml
//! [dependencies]
//! leasehold = "0.1"
//! kube = { version = "5", features = ["runtime", "rustls-tls"] }   # or openssl-tls, aws-lc-rs, ...
//! k8s-openapi = { version = "0.29", features = ["latest"] }       # or the version you target
//! ```
//!
//! [`client`] builds a `kube::Client` the way kubectl finds its configuration, for programs
//! that have none of their own. The opt-in feature `lean-client` adds leasehold's own HTTP/2
//! connection for the locks' requests (`client_with_http2`, feature `lean-client`), which the `leasehold` CLI uses.

mod annotation;
#[cfg(feature = "lean-client")]
mod http2;
mod kubeconfig;
mod lease;
mod multi;
mod object;
#[cfg(feature = "lean-client")]
mod tcp;
#[cfg(feature = "lean-client")]
mod wire;
#[cfg(feature = "lean-client")]
mod yaml;

pub use annotation::{AnnotationLock, LEADER_ANNOTATION};
pub use kubeconfig::{KubeconfigError, read_from as read_kubeconfig};
pub use lease::{HANDOVER_ANNOTATION, LeaseLock, lease_spec_to_record, record_to_lease_spec};
pub use multi::{MultiLock, UNKNOWN_LEADER};
#[cfg(feature = "lean-client")]
pub use yaml::YamlError;

use leasehold_core::{
    LeaderRecord, LockBackend, LockError, LockEvent, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};

/// Which Kubernetes object holds the record: client-go's lock types, by the same names.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum LockType {
    /// `leases`: a `coordination.k8s.io/v1` Lease (the default, and client-go's only one today).
    #[default]
    Leases,
    /// `configmaps`: an annotation on a ConfigMap (client-go ≤ 1.23).
    ConfigMaps,
    /// `endpoints`: an annotation on an Endpoints object (client-go ≤ 1.23, Endpoints-annotation electors).
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
#[non_exhaustive]
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
#[non_exhaustive]
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
    /// The kubeconfig's `proxy-url` cannot be used by this client (the message says why).
    #[error("{0}")]
    Proxy(String),
    /// The kubeconfig user's exec credential plugin (`user.exec`) could not be run, failed, or
    /// did not answer with an `ExecCredential`.
    #[error("exec credential plugin `{command}`")]
    Exec {
        /// The plugin's command.
        command: String,
        /// What went wrong.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// An exec credential plugin that exited unsuccessfully (kube-rs's own message shows its
/// output as bytes).
#[derive(Debug, thiserror::Error)]
#[error("{status}: {stderr}")]
struct PluginFailed {
    status: std::process::ExitStatus,
    stderr: String,
}

/// The client the Kubernetes locks send their requests with.
///
/// Made from a [`kube::Client`] (`From`, or [`client`]), as an operator that already has one
/// does, every request goes through that client.
///
/// Built by `client_with_http2` (feature `lean-client`, opt-in), it sends a lock's reads,
/// writes and watches over leasehold's own HTTP/2 connection to the API server (at thousands of
/// elections per process the request path is most of the cost of leading; docs/design.md has
/// the figures), and everything else (Events, Pod labels) through the [`kube::Client`] it also
/// holds. The two paths share the configuration (TLS, client certificates, tokens,
/// impersonation); with a server that does not agree to HTTP/2, a plain-`http` cluster URL, a
/// proxy or an exec credential plugin, everything goes through kube's client.
#[derive(Clone)]
pub struct ApiClient {
    kube: kube::Client,
    #[cfg(feature = "lean-client")]
    direct: Option<http2::Http2>,
}

impl From<kube::Client> for ApiClient {
    fn from(kube: kube::Client) -> Self {
        Self {
            kube,
            #[cfg(feature = "lean-client")]
            direct: None,
        }
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
    /// [`kube::Client`], without the `lean-client` feature, or once the server has refused
    /// HTTP/2).
    pub fn is_direct(&self) -> bool {
        #[cfg(feature = "lean-client")]
        {
            self.direct.as_ref().is_some_and(http2::Http2::usable)
        }
        #[cfg(not(feature = "lean-client"))]
        {
            false
        }
    }

    #[cfg(feature = "lean-client")]
    fn direct(&self) -> Option<&http2::Http2> {
        self.direct.as_ref().filter(|d| d.usable())
    }

    /// Sends `req` and decodes its JSON answer.
    pub(crate) async fn request<T: serde::de::DeserializeOwned>(
        &self,
        req: http::Request<Vec<u8>>,
    ) -> Result<T, kube::Error> {
        #[cfg(feature = "lean-client")]
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
        #[cfg(feature = "lean-client")]
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

/// Builds a client as kubectl finds its configuration: `kubeconfig` if given, else the files
/// in `KUBECONFIG` (merged, the first to set a value wins; missing ones skipped), else
/// `~/.kube/config`, else the in-cluster service account. Then [`client_from_config`].
///
/// # Errors
/// A [`ClientError`] naming what could not be read.
pub async fn client(kubeconfig: Option<&Path>) -> Result<ApiClient, ClientError> {
    client_from_config(config(kubeconfig).await?)
}

/// Like [`client`], with leasehold's own HTTP/2 path for the locks' requests (see
/// [`ApiClient`]).
///
/// # Errors
/// A [`ClientError`] naming what could not be read.
#[cfg(feature = "lean-client")]
pub async fn client_with_http2(kubeconfig: Option<&Path>) -> Result<ApiClient, ClientError> {
    client_from_config_with_http2(config(kubeconfig).await?)
}

/// The client configuration [`client`] uses: `kubeconfig` if given, else the files in
/// `KUBECONFIG`, else `~/.kube/config`, else the in-cluster service account. Kubeconfig files
/// are read with kube-rs's reader ([`read_kubeconfig`]), so everything kubectl accepts
/// (anchors, aliases, merge keys, `proxy-url`, `tls-server-name`, exec plugins) is taken as
/// kube-rs takes it. kube-rs's `KUBE_RS_DEBUG_*` overrides apply when no file is named, as
/// with `kube::Config::infer`. A kubeconfig that exists but cannot be used is an error, never
/// a fallback to the Pod's service account.
///
/// # Errors
/// A [`ClientError`] naming what could not be read.
pub async fn config(kubeconfig: Option<&Path>) -> Result<kube::Config, ClientError> {
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
            let config = kube::Config::from_custom_kubeconfig(kc.clone(), &options)
                .await
                .map_err(|e| wrap(KubeconfigError::from_kube(e, &kc)))?;
            kubeconfig::check(&config).map_err(wrap)?;
            config
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
                let config = kube::Config::from_custom_kubeconfig(kc.clone(), &options)
                    .await
                    .map_err(|e| wrap(KubeconfigError::from_kube(e, &kc)))?;
                kubeconfig::check(&config).map_err(wrap)?;
                config
            };
            config.apply_debug_overrides();
            config
        }
    };
    Ok(config)
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

/// Builds a client from a [`kube::Config`] with kube's own builder (its TLS stack, proxy
/// support and `tls-server-name` handling are what the application enabled on kube), with
/// these changes:
/// - kube's retry layer is off. It retries 429/5xx with backoffs that could outlast a renew
///   deadline; the elector retries itself, under a deadline per request;
/// - an exec credential plugin runs once, then once per refresh of its token, as with
///   client-go (kube's builder alone runs it three times);
/// - a request that cannot reach the API server says so with the `proxy-url` and
///   `tls-server-name` it was made with.
///
/// # Errors
/// [`ClientError::Build`] when the TLS, proxy or auth configuration is unusable (for example
/// an `https` cluster with no TLS feature enabled on kube); [`ClientError::Exec`] when the
/// exec credential plugin fails.
pub fn client_from_config(mut config: kube::Config) -> Result<ApiClient, ClientError> {
    config.default_retry = false;
    let (config, auth) = exec_once(config)?;
    let via = via(&config);
    let default_namespace = config.default_namespace.clone();
    let client = kube::Client::try_from(config).map_err(ClientError::Build)?;
    let auth = match auth {
        Credentials::Made(auth) => auth,
        Credentials::FromConfig => None,
    };
    if auth.is_none() && via.is_none() {
        return Ok(client.into());
    }
    // In front of kube's own stack: the plugin's credentials on every request (kube's auth
    // layer needs a service it can clone, which kube's boxed stack is not; its client is), and
    // the kubeconfig fields that shaped the connection on every failure to make one.
    let send = tower::service_fn(move |req: http::Request<kube::client::Body>| {
        let client = client.clone();
        let via = via.clone();
        async move {
            client.send(req).await.map_err(|e| -> tower::BoxError {
                match (&via, e) {
                    (_, e) if is_auth_error(&e) => Box::new(e),
                    (None, e) => Box::new(e),
                    (Some(via), e) => Box::new(Unreachable {
                        via: std::sync::Arc::clone(via),
                        // kube's own wrapper adds nothing but a second "ServiceError".
                        source: match e {
                            kube::Error::Service(e) => e,
                            e => Box::new(e),
                        },
                    }),
                }
            })
        }
    });
    let service = tower::ServiceBuilder::new()
        .option_layer(auth)
        .service(send);
    Ok(kube::Client::new(service, default_namespace).into())
}

/// The kubeconfig fields that shape a connection to the API server (`proxy-url`,
/// `tls-server-name`), as errors name them; `None` without either.
fn via(config: &kube::Config) -> Option<std::sync::Arc<str>> {
    let mut via = String::new();
    if let Some(proxy) = &config.proxy_url {
        via.push_str(&format!(" through proxy-url `{}`", redact(proxy)));
    }
    if let Some(name) = &config.tls_server_name {
        via.push_str(&format!(" as `{name}` (tls-server-name)"));
    }
    (!via.is_empty()).then(|| via.into())
}

/// A request that did not reach the API server (kube's client's own error is the source).
#[derive(Debug, thiserror::Error)]
#[error("cannot reach the API server{via}")]
struct Unreachable {
    via: std::sync::Arc<str>,
    source: tower::BoxError,
}

/// Whether `e` came from the credentials (an exec plugin's refresh, a token file), not from
/// the connection.
fn is_auth_error(e: &kube::Error) -> bool {
    match e {
        kube::Error::Auth(_) => true,
        kube::Error::Service(e) => e.is::<kube::client::AuthError>(),
        _ => false,
    }
}

/// The layer that adds the credentials to each request, if [`exec_once`] has made it.
enum Credentials {
    /// Not made: there is no exec credential plugin; kube's auth layer reads the credentials
    /// from the configuration without running anything.
    FromConfig,
    /// Made by running the plugin (none when it answered with a client certificate, which the
    /// configuration still reads with a run of its own).
    Made(Option<kube::client::middleware::AuthLayer>),
}

/// Runs the kubeconfig user's exec credential plugin once, as client-go does, and returns the
/// configuration to build the client from with the layer that adds its credentials.
///
/// kube-rs runs a plugin each time it reads the credentials: for the token (its auth layer),
/// for a client certificate (its TLS configuration) and, in its client builder, for the
/// client's expiry: three runs for one client, each of which may prompt, or cost a call to a
/// cloud's identity service. Here it runs once, through kube's own auth layer; when it answers
/// with a token, the rest is built from the configuration without the plugin, and the layer
/// (which runs the plugin again only when the token is about to expire) is added to the
/// client. A plugin that answers with a client certificate instead is left in the
/// configuration, from which kube-rs reads the certificate for TLS with a run of its own.
fn exec_once(mut config: kube::Config) -> Result<(kube::Config, Credentials), ClientError> {
    use kube::client::ConfigExt as _;
    let Some(exec) = &config.auth_info.exec else {
        return Ok((config, Credentials::FromConfig));
    };
    let command = exec.command.clone().unwrap_or_default();
    match config.auth_layer() {
        Ok(Some(auth)) => {
            config.auth_info.exec = None;
            Ok((config, Credentials::Made(Some(auth))))
        }
        Ok(None) => Ok((config, Credentials::Made(None))),
        Err(kube::Error::Auth(kube::client::AuthError::AuthExecRun { out, .. })) => {
            Err(ClientError::Exec {
                command,
                source: Box::new(PluginFailed {
                    status: out.status,
                    stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
                }),
            })
        }
        Err(e) => Err(ClientError::Exec {
            command,
            source: Box::new(e),
        }),
    }
}

/// Like [`client_from_config`], with leasehold's own HTTP/2 path for the locks' requests (see
/// [`ApiClient`]). Not with an exec credential plugin: the two paths would each run it, and a
/// plugin must run once per refresh.
///
/// The [`kube::Client`] beside it, for Events, Pod labels and whatever the HTTP/2 path cannot
/// carry, is a lean one of its own: HTTP/1.1 only (a second HTTP/2 client would add about
/// 140 KB to the sidecar's binary, which is resident memory: docs/design.md), no idle expiry of
/// pooled connections, no retry layer; the cluster's `tls-server-name` and an `http://`
/// `proxy-url` (HTTP CONNECT, with credentials in the URL if any) apply as in kube's own
/// builder, and an exec credential plugin runs once per refresh as in [`client_from_config`].
///
/// # Errors
/// [`ClientError::Build`] when the TLS or auth configuration is unusable;
/// [`ClientError::Proxy`] for a `proxy-url` this client cannot use (not `http://`);
/// [`ClientError::Exec`] when the exec credential plugin fails.
#[cfg(feature = "lean-client")]
pub fn client_from_config_with_http2(config: kube::Config) -> Result<ApiClient, ClientError> {
    let direct = if config.auth_info.exec.is_some() {
        None
    } else {
        http2::Http2::new(&config).map_err(ClientError::Build)?
    };
    let (config, auth) = exec_once(config)?;
    let auth = match auth {
        Credentials::Made(auth) => auth,
        Credentials::FromConfig => {
            use kube::client::ConfigExt as _;
            config.auth_layer().map_err(ClientError::Build)?
        }
    };
    let mut http = hyper_util::client::legacy::connect::HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(
        config
            .connect_timeout
            .or(Some(std::time::Duration::from_secs(10))),
    );
    let kube = match config.proxy_url.clone() {
        None => lean_kube_client(config, http, auth)?,
        Some(proxy) if proxy.scheme_str() == Some("http") => {
            // The proxy's address without credentials, and the credentials (percent-decoded,
            // as kubectl takes them) as a `Proxy-Authorization` header, as kube's builder does.
            let intercept = hyper_util::client::proxy::matcher::Matcher::builder()
                .all(proxy.to_string())
                .build()
                .intercept(&config.cluster_url)
                .ok_or_else(|| {
                    ClientError::Proxy(format!("proxy-url `{}` is not usable", redact(&proxy)))
                })?;
            let mut tunnel = hyper_util::client::legacy::connect::proxy::Tunnel::new(
                intercept.uri().clone(),
                http,
            );
            if let Some(auth) = intercept.basic_auth() {
                tunnel = tunnel.with_auth(auth.clone());
            }
            let via: std::sync::Arc<str> = redact(&proxy).into();
            let tunnel = tower::ServiceExt::map_err(tunnel, move |e| ProxyTunnel {
                proxy: std::sync::Arc::clone(&via),
                source: Box::new(e),
            });
            lean_kube_client(config, tunnel, auth)?
        }
        Some(proxy) => {
            return Err(ClientError::Proxy(format!(
                "proxy-url `{}`: only `http://` proxies (HTTP CONNECT) are supported by leasehold's own client",
                redact(&proxy)
            )));
        }
    };
    Ok(ApiClient { kube, direct })
}

/// `uri` without the password of its user information.
fn redact(uri: &http::Uri) -> String {
    let text = uri.to_string();
    match uri.authority().map(|a| a.as_str()) {
        Some(authority) if authority.contains('@') => {
            let (userinfo, host) = authority.rsplit_once('@').unwrap_or_default();
            let user = userinfo.split(':').next().unwrap_or_default();
            text.replacen(authority, &format!("{user}:***@{host}"), 1)
        }
        _ => text,
    }
}

/// A tunnel through the kubeconfig's proxy could not be opened.
#[cfg(feature = "lean-client")]
#[derive(Debug, thiserror::Error)]
#[error("no tunnel to the API server through proxy-url `{proxy}`")]
struct ProxyTunnel {
    proxy: std::sync::Arc<str>,
    source: tower::BoxError,
}

/// A connection to the API server could not be made as the kubeconfig's `tls-server-name`.
#[cfg(feature = "lean-client")]
#[derive(Debug, thiserror::Error)]
#[error("cannot connect to the API server as `{name}` (tls-server-name)")]
struct AsServerName {
    name: std::sync::Arc<str>,
    source: tower::BoxError,
}

#[cfg(feature = "lean-client")]
fn lean_kube_client<H>(
    config: kube::Config,
    connector: H,
    auth: Option<kube::client::middleware::AuthLayer>,
) -> Result<kube::Client, ClientError>
where
    H: tower::Service<http::Uri> + Clone + Send + Sync + 'static,
    H::Response: hyper_util::client::legacy::connect::Connection
        + hyper::rt::Read
        + hyper::rt::Write
        + Send
        + Unpin
        + 'static,
    H::Future: Send + 'static,
    H::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    use kube::client::ConfigExt as _;
    use tower::ServiceBuilder;
    // HTTP/1.1 only, and the cluster's `tls-server-name` as the TLS name.
    let https = config
        .rustls_https_connector_with_connector(connector)
        .map_err(ClientError::Build)?;
    let name: Option<std::sync::Arc<str>> = config.tls_server_name.as_deref().map(Into::into);
    let https = tower::ServiceExt::map_err(https, move |source| -> tower::BoxError {
        match &name {
            Some(name) => Box::new(AsServerName {
                name: std::sync::Arc::clone(name),
                source,
            }),
            None => source,
        }
    });
    let hyper = hyper_util::client::legacy::Builder::new(hyper_util::rt::TokioExecutor::new())
        .timer(hyper_util::rt::TokioTimer::new())
        .pool_timer(hyper_util::rt::TokioTimer::new())
        .pool_idle_timeout(None)
        .build(https);
    let service = ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .option_layer(auth)
        .layer(config.extra_headers_layer().map_err(ClientError::Build)?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
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

/// Whether `s` can name a Kubernetes object such as a Lease, a ConfigMap or a Pod: a DNS
/// subdomain (lowercase letters, digits, `-` and `.`, at most 253, each dot-separated part
/// starting and ending with a letter or digit). Checked before any request, so a bad name is an
/// error naming it rather than a 422 on every retry.
pub fn is_object_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_namespace_name)
}

/// Whether `s` can name a namespace: a DNS label (lowercase letters, digits and `-`, at most
/// 63, starting and ending with a letter or digit).
pub fn is_namespace_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// An error answer of the API server, in one line (kube's own `Display` of it repeats the
/// message and dumps the whole `Status`).
#[derive(Debug, thiserror::Error)]
#[error("API server answered {code} {reason}: {message}")]
#[non_exhaustive]
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

/// Sets the label `key` of the Pod `namespace/pod` to `value`, as the k8s-elector sidecar labels
/// its Pod `k8s-elector/status: leader|standby`. A Service that selects on the label then
/// routes to the leader alone.
///
/// One JSON merge patch (`{"metadata":{"labels":{key: value}}}`): it adds or replaces that one
/// label, creates the map if the Pod has none, and can never drop another label, whatever
/// fails. (A JSON patch `add /metadata/labels` would replace the whole map: a Pod that loses
/// `app=...` is orphaned by its ReplicaSet, which starts another.) A failure is returned for the
/// caller to retry.
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
    patch_pod_metadata(client, namespace, pod, &[(key, Some(value))], &[]).await
}

/// The Pod annotation the ReplicaSet controller ranks Pods by when it scales down: lower costs
/// go first (Kubernetes 1.22+, on by default).
pub const POD_DELETION_COST: &str = "controller.kubernetes.io/pod-deletion-cost";

/// The [`POD_DELETION_COST`] a leader gives its Pod: the highest there is, so that a scale-down
/// or a rolling update removes every standby of the ReplicaSet before the leader, and
/// leadership moves once per rollout rather than once per old Pod removed.
pub const LEADER_DELETION_COST: &str = "2147483647";

/// Sets (`Some`) or removes (`None`) labels and annotations of the Pod `namespace/pod` in one
/// JSON merge patch, leaving every other one as it is (see [`set_pod_label`]).
///
/// Needs `patch` on `pods`.
///
/// # Errors
/// A [`LockError`] naming the Pod (`Forbidden` names the verb and resource).
pub async fn patch_pod_metadata(
    client: &kube::Client,
    namespace: &str,
    pod: &str,
    labels: &[(&str, Option<&str>)],
    annotations: &[(&str, Option<&str>)],
) -> Result<(), LockError> {
    let object = format!("pod {namespace}/{pod}");
    let map = |pairs: &[(&str, Option<&str>)]| {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), serde_json::json!(v)))
            .collect::<serde_json::Map<_, _>>()
    };
    let mut metadata = serde_json::Map::new();
    if !labels.is_empty() {
        metadata.insert("labels".into(), map(labels).into());
    }
    if !annotations.is_empty() {
        metadata.insert("annotations".into(), map(annotations).into());
    }
    let patch = serde_json::json!({ "metadata": metadata });
    let req = http::Request::patch(format!("/api/v1/namespaces/{namespace}/pods/{pod}"))
        .header(http::header::CONTENT_TYPE, "application/merge-patch+json")
        .body(serde_json::to_vec(&patch).unwrap_or_default())
        .map_err(kube::Error::HttpError)
        .map_err(|e| map_error(e, "patch", "patch", "pods", object.clone()))?;
    client
        .request_text(req)
        .await
        .map(|_| ())
        .map_err(|e| map_error(e, "patch", "patch", "pods", object))
}
