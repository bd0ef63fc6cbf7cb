//! A fake Kubernetes API server for one Lease, on plain HTTP on 127.0.0.1, that answers what a
//! real one won't on demand: 403, 404 after a create, 409 storms, 410 on a watch, 429 with
//! Retry-After, 500, bodies that are not JSON, and requests that hang.
//!
//! It adds edge cases; it never replaces the real kube-apiserver the integration tests use.

use bytes::Bytes;
use http_body_util::{BodyExt as _, Full, StreamBody, combinators::BoxBody};
use hyper::{Method, Request, Response, body::Frame, service::service_fn};
use serde_json::{Value, json};
use std::{
    collections::BTreeMap,
    convert::Infallible,
    sync::{Arc, Mutex},
};
use tokio::sync::broadcast;

/// What the next requests get instead of a normal answer.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// An API `Status` with this HTTP code (403, 404, 409, 500, ...).
    Status(u16),
    /// 429 with `Retry-After: 30` (longer than any renew deadline: it must not be obeyed blindly).
    TooManyRequests,
    /// 200 with a body that is not JSON.
    NotJson,
    /// No answer at all.
    Hang,
}

#[derive(Default)]
struct State {
    lease: Option<Value>,
    rv: u64,
    /// Faults for non-watch requests: (fault, how many more requests get it).
    fault: Option<(Fault, u32)>,
    /// Watches get a 410 Gone event right away while set.
    watch_gone: bool,
    requests: BTreeMap<String, u64>,
    /// One Pod's labels, for the role label's PATCH requests.
    pod_labels: Option<serde_json::Map<String, Value>>,
    /// The `Content-Type` of each Pod PATCH, in order.
    pod_patches: Vec<String>,
}

/// The fake server; dropping it stops it.
pub struct FakeApi {
    state: Arc<Mutex<State>>,
    port: u16,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Body = BoxBody<Bytes, Infallible>;

fn full(v: impl Into<Bytes>) -> Body {
    Full::new(v.into()).boxed()
}

fn status(code: u16, reason: &str) -> Response<Body> {
    let body = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code, "reason": reason, "message": format!("injected {code}")});
    Response::builder()
        .status(code)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .expect("response")
}

// === impl FakeApi ===

impl FakeApi {
    /// Starts the server on a free port.
    ///
    /// # Panics
    /// If it cannot bind.
    pub async fn start() -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let port = listener.local_addr().expect("addr").port();
        let state: Arc<Mutex<State>> = Arc::default();
        let (tx, _) = broadcast::channel::<Value>(64);
        let st = Arc::clone(&state);
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let st = Arc::clone(&st);
                let tx = tx.clone();
                tokio::spawn(async move {
                    let svc = service_fn(move |req| {
                        let st = Arc::clone(&st);
                        let tx = tx.clone();
                        async move { Ok::<_, Infallible>(handle(req, st, tx).await) }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(hyper_util::rt::TokioIo::new(stream), svc)
                        .await;
                });
            }
        });
        Self { state, port, task }
    }

    /// The server's URL.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// A kube config pointing at it.
    pub fn config(&self) -> kube::Config {
        let mut c = kube::Config::new(self.url().parse().expect("url"));
        c.default_namespace = "default".into();
        c
    }

    /// The next `count` non-watch requests get `fault`.
    pub fn inject(&self, fault: Fault, count: u32) {
        self.state.lock().expect("poisoned").fault = Some((fault, count));
    }

    /// Stops injecting.
    pub fn clear(&self) {
        let mut st = self.state.lock().expect("poisoned");
        st.fault = None;
        st.watch_gone = false;
    }

    /// While set, every watch is answered with a 410 Gone event at once.
    pub fn watch_gone(&self, on: bool) {
        self.state.lock().expect("poisoned").watch_gone = on;
    }

    /// Creates the Pod the role label is set on, with these labels.
    pub fn put_pod(&self, labels: serde_json::Map<String, Value>) {
        self.state.lock().expect("poisoned").pod_labels = Some(labels);
    }

    /// The Pod's labels now.
    pub fn pod_labels(&self) -> Option<serde_json::Map<String, Value>> {
        self.state.lock().expect("poisoned").pod_labels.clone()
    }

    /// The `Content-Type` of every Pod PATCH received, in order.
    pub fn pod_patches(&self) -> Vec<String> {
        self.state.lock().expect("poisoned").pod_patches.clone()
    }

    /// Requests received, by `METHOD kind` (`GET get`, `GET watch`, `PUT`, `POST`).
    pub fn requests(&self) -> BTreeMap<String, u64> {
        self.state.lock().expect("poisoned").requests.clone()
    }

    /// Deletes the stored Lease (as a 404 after create would look).
    pub fn delete(&self) {
        self.state.lock().expect("poisoned").lease = None;
    }

    /// The stored Lease's spec.
    pub fn spec(&self) -> Option<Value> {
        self.state
            .lock()
            .expect("poisoned")
            .lease
            .as_ref()
            .map(|l| l["spec"].clone())
    }
}

async fn handle(
    req: Request<hyper::body::Incoming>,
    st: Arc<Mutex<State>>,
    tx: broadcast::Sender<Value>,
) -> Response<Body> {
    let watch = req
        .uri()
        .query()
        .is_some_and(|q| q.contains("watch=true") || q.contains("watch=1"));
    let method = req.method().clone();
    let key = format!(
        "{} {}",
        method,
        if watch {
            "watch"
        } else if method == Method::GET {
            "get"
        } else {
            ""
        }
    )
    .trim()
    .to_owned();
    let fault = {
        let mut s = st.lock().expect("poisoned");
        *s.requests.entry(key).or_default() += 1;
        if watch {
            None
        } else {
            match s.fault.as_mut() {
                Some((f, n)) if *n > 0 => {
                    *n -= 1;
                    Some(f.clone())
                }
                _ => None,
            }
        }
    };
    match fault {
        Some(Fault::Status(code)) => return status(code, "Injected"),
        Some(Fault::TooManyRequests) => {
            let mut r = status(429, "TooManyRequests");
            r.headers_mut()
                .insert("retry-after", "30".parse().expect("header"));
            return r;
        }
        Some(Fault::NotJson) => {
            return Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(full("<html>not json</html>"))
                .expect("response");
        }
        Some(Fault::Hang) => std::future::pending::<()>().await,
        None => {}
    }
    let path = req.uri().path().to_owned();
    let content_type = req
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let name = path.rsplit('/').next().unwrap_or_default().to_owned();
    if path.contains("/pods/") {
        return patch_pod(&st, &method, &content_type, &body);
    }
    if watch {
        let gone = st.lock().expect("poisoned").watch_gone;
        let rx = tx.subscribe();
        // 410 Gone: one ERROR event, then the stream ends, as the real server does.
        let first = gone.then(|| json!({"type": "ERROR", "object": {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired", "message": "too old resource version"}}));
        let stream =
            futures_util::stream::unfold((first, rx, false), |(first, mut rx, done)| async move {
                if done {
                    return None;
                }
                if let Some(ev) = first {
                    return Some((
                        Ok::<_, Infallible>(Frame::data(Bytes::from(format!("{ev}\n")))),
                        (None, rx, true),
                    ));
                }
                let ev = rx.recv().await.ok()?;
                Some((
                    Ok(Frame::data(Bytes::from(format!("{ev}\n")))),
                    (None, rx, false),
                ))
            });
        return Response::builder()
            .status(200)
            .header("content-type", "application/json")
            .body(StreamBody::new(stream).boxed())
            .expect("response");
    }
    let mut s = st.lock().expect("poisoned");
    let notify = |s: &State, kind: &str| {
        if let Some(l) = &s.lease {
            let _ = tx.send(json!({"type": kind, "object": l}));
        }
    };
    match method {
        Method::GET => match &s.lease {
            Some(l) => Response::builder()
                .status(200)
                .header("content-type", "application/json")
                .body(full(l.to_string()))
                .expect("response"),
            None => status(404, "NotFound"),
        },
        Method::POST => {
            if s.lease.is_some() {
                return status(409, "AlreadyExists");
            }
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest");
            };
            s.rv += 1;
            obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
            obj["apiVersion"] = json!("coordination.k8s.io/v1");
            obj["kind"] = json!("Lease");
            s.lease = Some(obj.clone());
            notify(&s, "ADDED");
            Response::builder()
                .status(201)
                .header("content-type", "application/json")
                .body(full(obj.to_string()))
                .expect("response")
        }
        Method::PUT => {
            let Ok(mut obj) = serde_json::from_slice::<Value>(&body) else {
                return status(400, "BadRequest");
            };
            let current = s
                .lease
                .as_ref()
                .map(|l| l["metadata"]["resourceVersion"].clone());
            match current {
                None => status(404, "NotFound"),
                Some(rv) if rv != obj["metadata"]["resourceVersion"] => status(409, "Conflict"),
                Some(_) => {
                    s.rv += 1;
                    obj["metadata"]["resourceVersion"] = json!(s.rv.to_string());
                    obj["metadata"]["name"] = json!(name);
                    s.lease = Some(obj.clone());
                    notify(&s, "MODIFIED");
                    Response::builder()
                        .status(200)
                        .header("content-type", "application/json")
                        .body(full(obj.to_string()))
                        .expect("response")
                }
            }
        }
        _ => status(405, "MethodNotAllowed"),
    }
}

/// A Pod PATCH, as the API server applies the three patch types to `metadata.labels`.
fn patch_pod(
    st: &Mutex<State>,
    method: &Method,
    content_type: &str,
    body: &[u8],
) -> Response<Body> {
    let mut s = st.lock().expect("poisoned");
    s.pod_patches.push(content_type.to_owned());
    if *method != Method::PATCH {
        return status(405, "MethodNotAllowed");
    }
    let Some(labels) = s.pod_labels.as_mut() else {
        return status(404, "NotFound");
    };
    let Ok(patch) = serde_json::from_slice::<Value>(body) else {
        return status(400, "BadRequest");
    };
    match content_type {
        "application/merge-patch+json" | "application/strategic-merge-patch+json" => {
            if let Some(set) = patch["metadata"]["labels"].as_object() {
                for (k, v) in set {
                    if v.is_null() {
                        labels.remove(k);
                    } else {
                        labels.insert(k.clone(), v.clone());
                    }
                }
            }
        }
        "application/json-patch+json" => {
            for op in patch.as_array().into_iter().flatten() {
                let path = op["path"].as_str().unwrap_or_default();
                if op["op"] != "add" {
                    return status(422, "Invalid");
                }
                if path == "/metadata/labels" {
                    // Replaces the whole map, as RFC 6902 `add` does for an existing member.
                    *labels = op["value"].as_object().cloned().unwrap_or_default();
                } else if let Some(key) = path.strip_prefix("/metadata/labels/") {
                    let key = key.replace("~1", "/").replace("~0", "~");
                    labels.insert(key, op["value"].clone());
                } else {
                    return status(422, "Invalid");
                }
            }
        }
        _ => return status(415, "UnsupportedMediaType"),
    }
    let body =
        json!({"kind": "Pod", "apiVersion": "v1", "metadata": {"name": "pod", "labels": labels}});
    Response::builder()
        .status(200)
        .header("content-type", "application/json")
        .body(full(body.to_string()))
        .expect("response")
}
