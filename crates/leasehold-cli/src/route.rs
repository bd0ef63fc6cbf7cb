//! Leader routing that survives a partition (`--route-service`): each new leader writes the
//! one EndpointSlice of a selector-less Service, naming its own Pod IP alone.
//!
//! The Pod label (`--label-pod`) is removed only by the Pod that holds it, so a leader cut off
//! from the API server keeps `leader`, and a Service selecting on the label keeps sending it
//! traffic after another candidate has taken over. Here the *new* leader does the writing: its
//! first act is to replace the slice's only endpoint with itself, so the partitioned ex-leader
//! drops out without its cooperation. There is one slice with one address, replaced in one
//! write, so a Service never has two endpoints at once. Every write is fenced
//! ([`leasehold::fence`]): a deposed leader's late write cannot undo its successor's.

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::Api;
use leasehold::{Leadership, fence::Fence};
use std::{net::IpAddr, time::Duration};

/// Why routing cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The Service cannot be read.
    #[error("--route-service: cannot read Service {namespace}/{name}: {reason}")]
    Read {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What the API server said (it names the verb and resource when forbidden).
        reason: String,
    },
    /// The Service is not one leasehold can route.
    #[error("--route-service: Service {namespace}/{name} {problem}")]
    Unusable {
        /// Its namespace.
        namespace: String,
        /// Its name.
        name: String,
        /// What is wrong with it.
        problem: String,
    },
}

/// Writes the leader's endpoint.
#[derive(Clone)]
pub(crate) struct Router {
    api: Api<EndpointSlice>,
    service: String,
    slice: EndpointSlice,
}

// === impl Router ===

impl Router {
    /// Reads the Service `namespace/service` once: it must exist and have no selector (with
    /// one, Kubernetes writes its own slices for it, and it would have two sets of endpoints).
    /// Its ports become the slice's, by `targetPort` number (or `port` when it has none).
    pub(crate) async fn new(
        client: kube::Client,
        namespace: &str,
        service: &str,
        pod_ip: IpAddr,
        pod: Option<&str>,
    ) -> Result<Self, Error> {
        let services: Api<Service> = Api::namespaced(client.clone(), namespace);
        let unusable = |problem: String| Error::Unusable {
            namespace: namespace.to_owned(),
            name: service.to_owned(),
            problem,
        };
        let svc = services.get(service).await.map_err(|e| Error::Read {
            namespace: namespace.to_owned(),
            name: service.to_owned(),
            reason: short(&e),
        })?;
        let spec = svc.spec.unwrap_or_default();
        if spec.selector.as_ref().is_some_and(|s| !s.is_empty()) {
            return Err(unusable(
                "has a selector: Kubernetes keeps its endpoints; leader routing needs a Service without one".into(),
            ));
        }
        let mut ports = Vec::new();
        for p in spec.ports.unwrap_or_default() {
            use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
            let number = match &p.target_port {
                None => p.port,
                Some(IntOrString::Int(n)) => *n,
                Some(IntOrString::String(name)) => {
                    return Err(unusable(format!(
                        "port {} has the named targetPort `{name}`, which only a selector can resolve; give a number",
                        p.port
                    )));
                }
            };
            ports.push(serde_json::json!({
                "name": p.name.unwrap_or_default(),
                "port": number,
                "protocol": p.protocol.unwrap_or_else(|| "TCP".into()),
            }));
        }
        if ports.is_empty() {
            return Err(unusable("has no ports".into()));
        }
        let slice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{service}-leader"),
                "labels": {
                    "kubernetes.io/service-name": service,
                    "endpointslice.kubernetes.io/managed-by": "leasehold.dev",
                },
            },
            "addressType": if pod_ip.is_ipv4() { "IPv4" } else { "IPv6" },
            "endpoints": [{
                "addresses": [pod_ip.to_string()],
                "conditions": { "ready": true },
                "targetRef": pod.map(|p| serde_json::json!({"kind": "Pod", "namespace": namespace, "name": p})),
            }],
            "ports": ports,
        }))
        .map_err(|e| unusable(format!("cannot be routed: {e}")))?;
        Ok(Self {
            api: Api::namespaced(client, namespace),
            service: service.to_owned(),
            slice,
        })
    }

    /// Points the Service at this Pod for `term`, retrying every second until it is written,
    /// the term ends, or a later term has written the slice.
    pub(crate) async fn route(self, term: Leadership) {
        let fence = Fence::new(&term);
        let mut last_error: Option<String> = None;
        loop {
            match fence.replace(&self.api, None, self.slice.clone()).await {
                Ok(_) => {
                    tracing::info!(service = %self.service, fencing_token = %term.fencing_token(), "routed the Service to this leader");
                    return;
                }
                Err(
                    e @ (leasehold::fence::Error::TermEnded { .. }
                    | leasehold::fence::Error::Superseded { .. }),
                ) => {
                    tracing::info!(service = %self.service, "not routing: {e}");
                    return;
                }
                Err(e) => {
                    let msg = match &e {
                        leasehold::fence::Error::Kube { object, source } => {
                            format!("writing {object}: {}", short(source))
                        }
                        other => leasehold::display_chain(other),
                    };
                    if last_error.as_ref() != Some(&msg) {
                        tracing::warn!(service = %self.service, error = %msg, "cannot route the Service to this leader; retrying every second");
                        last_error = Some(msg);
                    }
                }
            }
            tokio::select! {
                () = term.lost() => return,
                () = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }
}

/// A Kubernetes error in one line: an API status as the server's message with its code and
/// reason (a 403's message names the verb, resource and group), anything else as it displays.
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => leasehold::display_chain(other),
    }
}
