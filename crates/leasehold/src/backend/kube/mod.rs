//! Kubernetes backends (feature `kube`): the `coordination.k8s.io/v1` Lease lock, and the client
//! configuration rules every Kubernetes lock shares.

mod lease;

pub use lease::LeaseLock;

use std::path::{Path, PathBuf};

/// Where the service-account namespace is mounted in a Pod.
pub const SERVICE_ACCOUNT_NAMESPACE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

/// Why a Kubernetes client could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file named by `--kubeconfig` could not be read.
    #[error("cannot read kubeconfig {path}")]
    Kubeconfig {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: kube::config::KubeconfigError,
    },
    /// No configuration was found (KUBECONFIG, ~/.kube/config, in-cluster).
    #[error(
        "no Kubernetes client configuration found (tried KUBECONFIG, ~/.kube/config, in-cluster)"
    )]
    Infer(#[source] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("cannot build a Kubernetes client")]
    Build(#[source] kube::Error),
}

/// Builds a client: `kubeconfig` if given, else `KUBECONFIG`, then `~/.kube/config`, then the
/// in-cluster service account.
///
/// kube's own retry layer is turned off: it retries 429/5xx with backoffs that could outlast a
/// renew deadline. The elector retries itself, under a deadline per request.
///
/// # Errors
/// A [`ClientError`] naming what could not be read.
pub async fn client(kubeconfig: Option<&Path>) -> Result<kube::Client, ClientError> {
    let mut config = match kubeconfig {
        Some(path) => {
            let kc = kube::config::Kubeconfig::read_from(path).map_err(|source| {
                ClientError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                }
            })?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .map_err(|source| ClientError::Kubeconfig {
                    path: path.to_owned(),
                    source,
                })?
        }
        None => kube::Config::infer().await.map_err(ClientError::Infer)?,
    };
    config.default_retry = false;
    kube::Client::try_from(config).map_err(ClientError::Build)
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
        kube::Error::Api(status) => match status.code {
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
                source: Some(Box::new(kube::Error::Api(status))),
            },
            // 410 Gone: a watch's version is too old; the caller reads and watches again.
            410 | 429 | 500..=599 => LockError::Unavailable {
                op,
                object,
                source: Box::new(kube::Error::Api(status)),
            },
            code => LockError::Other {
                op,
                object,
                message: format!("API server answered {code}"),
                source: Some(Box::new(kube::Error::Api(status))),
            },
        },
        other => LockError::Unavailable {
            op,
            object,
            source: Box::new(other),
        },
    }
}
