//! leasehold's own HTTP/2 path to the API server for the lock objects' reads, writes and
//! watches: one TLS connection, driven by the `h2` crate directly.
//!
//! Why not kube's `Client`: at thousands of elections per process the request path *is* the
//! cost of leading. Through `kube::Client` a renewal went through a tower `Buffer` (a channel, a
//! worker task and a oneshot), a boxed service, hyper's connection pool and hyper's dispatch
//! channel, and hyper sent every request body from a task of its own once the stream was open:
//! so the HEADERS frames of a batch of renewals left in one write, but each DATA frame in a
//! `writev` and a TLS record of its own (`strace` at 10,000 elections: 1.15 `writev` per request).
//! Here the caller's task opens the stream and queues the body at once, so a batch of renewals
//! that wake together on the elector's shared timer grid goes out in one TLS record and one
//! system call; the answer is read from the stream without copies. Under TLS runs `tcp::Tcp`,
//! which, while 16 or more requests are in flight, keeps epoll from waking the process for every
//! answer and reads them every 10 ms instead (the module says why).
//!
//! What stays kube's: the configuration (TLS roots, client certificates, `tls-server-name`), and
//! authentication and impersonation, applied by kube's own tower layers to each request before
//! it is sent ([`Http2::new`]). When the server does not agree to HTTP/2 (ALPN), or the cluster
//! URL is not `https`, or a proxy is configured, [`ApiClient`](super::ApiClient) uses kube's
//! client instead, so nothing that worked before stops working.

use super::tcp::{InFlight, Tcp};
use bytes::{Bytes, BytesMut};
use futures_util::{Stream, stream};
use h2::{RecvStream, client::SendRequest};
use http::{Request, Response, Uri, uri};
use kube::{api::WatchEvent, core::Status};
use serde::de::DeserializeOwned;
use std::{
    pin::Pin,
    task::{Context, Poll},
};
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::TcpStream,
};
use tokio_rustls::{TlsConnector, client::TlsStream, rustls::pki_types::ServerName};
use tower::{BoxError, ServiceExt as _};

/// Applies kube's authentication and impersonation layers to a request head. kube's layers
/// are tower services over HTTP requests and responses, so the decorated head comes back as the
/// "response" of an innermost service that answers with the request it was given.
type Decorate =
    tower::util::BoxCloneSyncService<Request<kube::client::Body>, Response<Request<()>>, BoxError>;

/// How often an idle connection is checked with a PING, and how long the answer may take
/// before the connection is dropped (the next request opens a new one).
const PING_EVERY: Duration = Duration::from_secs(30);
const PING_TIMEOUT: Duration = Duration::from_secs(20);

/// One HTTP/2 connection to the API server, opened on first use and again after it fails.
#[derive(Clone)]
pub(crate) struct Http2 {
    inner: Arc<Inner>,
}

struct Inner {
    authority: uri::Authority,
    /// The cluster URL's path ("" or e.g. "/k8s/clusters/c-1"), without a trailing `/`.
    prefix: String,
    host: String,
    port: u16,
    /// ` as `NAME` (tls-server-name)` when the kubeconfig names the server, for TLS errors.
    as_name: String,
    server_name: ServerName<'static>,
    tls: TlsConnector,
    connect_timeout: Duration,
    decorate: Decorate,
    /// The live connection, or the attempt to open one. Never held across an `await`.
    slot: std::sync::Mutex<Slot>,
    /// The server did not agree to HTTP/2: requests go through kube's client from now on.
    refused: AtomicBool,
    /// Requests (not watches) waiting for their answers: the connection reads in batches while
    /// there are many (`tcp`).
    in_flight: Arc<AtomicUsize>,
}

/// Why a request could not be sent on this path.
pub(crate) enum Failure {
    /// The server does not speak HTTP/2: send the request (given back) through kube's client.
    NotHttp2(Request<Vec<u8>>),
    /// The request failed, as kube's client would report it.
    Kube(kube::Error),
}

impl From<kube::Error> for Failure {
    fn from(e: kube::Error) -> Self {
        Self::Kube(e)
    }
}

/// A transport failure, as kube reports one: an `Unavailable` lock error with the cause.
fn transport(what: &str, e: impl std::fmt::Display) -> kube::Error {
    kube::Error::Service(format!("{what}: {e}").into())
}

// === impl Http2 ===

impl Http2 {
    /// The path for `config`, or `None` when it cannot be used (not `https`, or a proxy).
    pub(crate) fn new(config: &kube::Config) -> Result<Option<Self>, kube::Error> {
        use kube::client::ConfigExt as _;
        let url = &config.cluster_url;
        if url.scheme() != Some(&uri::Scheme::HTTPS) || config.proxy_url.is_some() {
            return Ok(None);
        }
        let Some(authority) = url.authority().cloned() else {
            return Ok(None);
        };
        let host = authority
            .host()
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_owned();
        let port = authority.port_u16().unwrap_or(443);
        let server_name = match &config.tls_server_name {
            Some(name) => ServerName::try_from(name.clone())
                .map_err(|e| transport(&format!("tls-server-name `{name}`"), e))?,
            None => ServerName::try_from(host.clone())
                .map_err(|e| transport(&format!("TLS server name `{host}`"), e))?,
        };
        let mut tls = config.rustls_client_config()?;
        // HTTP/1.1 offered too: a server that enforces ALPN overlap and speaks only HTTP/1.1
        // must answer (and be used through kube's client), not fail the handshake.
        tls.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
        let decorate = tower::ServiceBuilder::new()
            .option_layer(config.auth_layer()?)
            .layer(config.extra_headers_layer()?)
            .map_err(BoxError::from)
            .service(tower::service_fn(|r: Request<kube::client::Body>| {
                std::future::ready(Ok::<_, BoxError>(Response::new(r.map(|_| ()))))
            }));
        Ok(Some(Self {
            inner: Arc::new(Inner {
                authority,
                prefix: url.path().trim_end_matches('/').to_owned(),
                host,
                port,
                as_name: config
                    .tls_server_name
                    .as_ref()
                    .map(|name| format!(" as `{name}` (tls-server-name)"))
                    .unwrap_or_default(),
                server_name,
                tls: TlsConnector::from(Arc::new(tls)),
                connect_timeout: config.connect_timeout.unwrap_or(Duration::from_secs(10)),
                decorate: Decorate::new(decorate),
                slot: std::sync::Mutex::default(),
                refused: AtomicBool::new(false),
                in_flight: Arc::default(),
            }),
        }))
    }

    /// False once the server has refused HTTP/2.
    pub(crate) fn usable(&self) -> bool {
        !self.inner.refused.load(Ordering::Relaxed)
    }

    /// Sends `req` (a path relative to the cluster URL, as kube's request builders make them)
    /// and decodes the JSON answer; a 4xx/5xx answer is [`kube::Error::Api`], as from kube.
    pub(crate) async fn request<T: DeserializeOwned>(
        &self,
        req: Request<Vec<u8>>,
    ) -> Result<T, Failure> {
        let _in_flight = InFlight::enter(&self.inner.in_flight);
        let resp = self.send(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        let bytes = collect(&mut body).await?;
        if status.is_client_error() || status.is_server_error() {
            return Err(api_error(status, &bytes).into());
        }
        from_json(&bytes).map_err(|e| kube::Error::SerdeError(e).into())
    }

    /// Starts a watch: the events of the answer's lines, as kube's `request_events` reads them.
    pub(crate) async fn events<T: DeserializeOwned + Send + 'static>(
        &self,
        req: Request<Vec<u8>>,
    ) -> Result<impl Stream<Item = kube::Result<WatchEvent<T>>> + Send + use<T>, Failure> {
        let resp = self.send(req).await?;
        let status = resp.status();
        let mut body = resp.into_body();
        if status.is_client_error() || status.is_server_error() {
            let bytes = collect(&mut body).await?;
            return Err(api_error(status, &bytes).into());
        }
        Ok(stream::unfold(
            Some((body, BytesMut::new())),
            |st| async move {
                let (mut body, mut buf) = st?;
                loop {
                    if let Some(end) = buf.iter().position(|&b| b == b'\n') {
                        let line = buf.split_to(end + 1);
                        let line = line.trim_ascii();
                        if line.is_empty() {
                            continue;
                        }
                        let item = decode_event(line);
                        return Some((item, Some((body, buf))));
                    }
                    match body.data().await {
                        Some(Ok(chunk)) => {
                            let _ = body.flow_control().release_capacity(chunk.len());
                            buf.extend_from_slice(&chunk);
                        }
                        Some(Err(e)) => {
                            return Some((Err(transport("watch stream", e)), None));
                        }
                        // A last line without its newline is cut off: dropped, as kube does.
                        None => return None,
                    }
                }
            },
        ))
    }

    async fn send(&self, req: Request<Vec<u8>>) -> Result<Response<RecvStream>, Failure> {
        let inner = &*self.inner;
        let (mut parts, body) = req.into_parts();
        let uri = inner.absolute(&parts.uri)?;
        let mut retried = false;
        loop {
            let (generation, sender) = match self.sender().await {
                Ok(s) => s,
                Err(Connect::NotHttp2) => {
                    return Err(Failure::NotHttp2(Request::from_parts(parts, body)));
                }
                Err(Connect::Failed(e)) => return Err(kube::Error::Service(e.into()).into()),
            };
            let mut sender = match sender.ready().await {
                Ok(s) => s,
                // The connection ended while idle (the server closed it, a PING went
                // unanswered): nothing was sent, so open a new one and send there, once.
                Err(e) => {
                    self.forget(generation);
                    if std::mem::replace(&mut retried, true) {
                        return Err(transport("HTTP/2 connection", e).into());
                    }
                    continue;
                }
            };
            parts.uri = uri;
            let head = inner
                .decorate
                .clone()
                .oneshot(Request::from_parts(parts, kube::client::Body::empty()))
                .await
                .map_err(kube::Error::Service)?
                .into_body();
            let end = body.is_empty();
            let (answer, mut out) = match sender.send_request(head, end) {
                Ok(x) => x,
                // The connection failed, or it ran out of stream IDs (h2 reports both here):
                // the next request opens a new one.
                Err(e) => {
                    self.forget(generation);
                    return Err(transport("HTTP/2 request", e).into());
                }
            };
            if !end {
                // Queued on the stream now, not from a task of its own: it leaves with the
                // HEADERS frame in the connection's next write.
                out.send_data(Bytes::from(body), true)
                    .map_err(|e| transport("HTTP/2 request body", e))?;
            }
            return answer
                .await
                .map_err(|e| transport("HTTP/2 answer", e).into());
        }
    }

    /// The live connection, or the one being opened.
    ///
    /// The opening runs in a task of its own, bounded as a whole (TCP, TLS and HTTP/2
    /// handshakes) by the connect timeout, and every request that needs a connection meanwhile
    /// waits for that one attempt: a request that gives up at its deadline leaves the attempt
    /// running for the others, and no request holds a lock while it waits.
    async fn sender(&self) -> Result<(u64, SendRequest<Bytes>), Connect> {
        use futures_util::FutureExt as _;
        let attempt = {
            let mut slot = self.inner.lock();
            if let Some((generation, s)) = &slot.live {
                return Ok((*generation, s.clone()));
            }
            if self.inner.refused.load(Ordering::Relaxed) {
                return Err(Connect::NotHttp2);
            }
            match &slot.opening {
                Some(attempt) => attempt.clone(),
                None => {
                    let inner = Arc::clone(&self.inner);
                    let task =
                        tokio::spawn(async move {
                            let opened =
                                match tokio::time::timeout(inner.connect_timeout, inner.connect())
                                    .await
                                {
                                    Ok(r) => r,
                                    Err(_) => Err(Connect::Failed(format!(
                                        "no connection to {}:{} within {:?}",
                                        inner.host, inner.port, inner.connect_timeout
                                    ))),
                                };
                            let mut slot = inner.lock();
                            slot.opening = None;
                            let sender = opened?;
                            slot.generation += 1;
                            slot.live = Some((slot.generation, sender.clone()));
                            Ok((slot.generation, sender))
                        });
                    let attempt = task
                        .map(|r| {
                            r.unwrap_or_else(|e| {
                                Err(Connect::Failed(format!("connecting failed: {e}")))
                            })
                        })
                        .boxed()
                        .shared();
                    slot.opening = Some(attempt.clone());
                    attempt
                }
            }
        };
        attempt.await
    }

    /// Drops connection `generation` if it is still the live one (a newer one stays).
    fn forget(&self, generation: u64) {
        let mut slot = self.inner.lock();
        if slot.live.as_ref().is_some_and(|(g, _)| *g == generation) {
            slot.live = None;
        }
    }
}

/// An attempt to open a connection, shared by every request waiting for it.
type Opening = futures_util::future::Shared<
    futures_util::future::BoxFuture<'static, Result<(u64, SendRequest<Bytes>), Connect>>,
>;

#[derive(Default)]
struct Slot {
    /// Connections opened so far; the live one's number.
    generation: u64,
    live: Option<(u64, SendRequest<Bytes>)>,
    opening: Option<Opening>,
}

#[derive(Clone)]
enum Connect {
    NotHttp2,
    Failed(String),
}

// === impl Inner ===

impl Inner {
    fn lock(&self) -> std::sync::MutexGuard<'_, Slot> {
        // The slot holds no invariant a panic elsewhere could break half-way.
        self.slot
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn absolute(&self, relative: &Uri) -> Result<Uri, kube::Error> {
        let path_and_query = if self.prefix.is_empty() {
            relative
                .path_and_query()
                .cloned()
                .unwrap_or_else(|| uri::PathAndQuery::from_static("/"))
        } else {
            let pq = relative.path_and_query().map_or("/", |pq| pq.as_str());
            format!("{}{pq}", self.prefix)
                .parse()
                .map_err(|e| transport("request path", e))?
        };
        Uri::builder()
            .scheme(uri::Scheme::HTTPS)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
            .map_err(kube::Error::HttpError)
    }

    async fn connect(&self) -> Result<SendRequest<Bytes>, Connect> {
        let fail = |what: &str, e: &dyn std::fmt::Display| {
            Connect::Failed(format!("{what} {}:{}: {e}", self.host, self.port))
        };
        let tcp = TcpStream::connect((self.host.as_str(), self.port))
            .await
            .map_err(|e| fail("cannot connect to", &e))?;
        let _ = tcp.set_nodelay(true);
        let tcp = Tcp::new(tcp, Arc::clone(&self.in_flight))
            .map_err(|e| fail("cannot register the connection to", &e))?;
        let tls = self
            .tls
            .connect(self.server_name.clone(), tcp)
            .await
            .map_err(|e| {
                Connect::Failed(format!(
                    "TLS handshake with {}:{}{}: {e}",
                    self.host, self.port, self.as_name
                ))
            })?;
        if tls.get_ref().1.alpn_protocol() != Some(b"h2") {
            tracing::info!(server = %self.authority, "the API server does not offer HTTP/2; using kube's client");
            self.refused.store(true, Ordering::Relaxed);
            return Err(Connect::NotHttp2);
        }
        // Flow-control windows as hyper's client sets them (h2's defaults are 64 KiB): the
        // answers to one grid tick's renewals are about that much, and a watch per standby
        // shares the connection, so a small window would make the server wait for our
        // WINDOW_UPDATE in the middle of a burst or a handover.
        //
        // At most 100 streams before the server's SETTINGS arrive. h2 assumes no limit until
        // then, as HTTP/2 allows, but the API server (Go's HTTP/2 server) refuses streams past
        // 100 until the client has acknowledged its settings: at 1,000 elections started at
        // once, 900 first reads came back `REFUSED_STREAM` and waited a retry period (20 s in
        // the benchmark) to try again. 100 is the least a server should allow (RFC 9113,
        // 6.5.2); once its SETTINGS arrive, its own limit applies.
        let (sender, mut conn) = h2::client::Builder::new()
            .initial_max_send_streams(100)
            .initial_window_size(2 * 1024 * 1024)
            .initial_connection_window_size(5 * 1024 * 1024)
            .enable_push(false)
            .handshake::<_, Bytes>(Unvectored(tls))
            .await
            .map_err(|e| fail("HTTP/2 handshake with", &e))?;
        let ping = conn.ping_pong();
        tokio::spawn(drive(conn, ping, self.authority.clone()));
        Ok(sender)
    }
}

/// Runs the connection until it ends, checking an idle one with PINGs: an API server that
/// vanished without closing the connection is noticed within a minute, not at the next
/// request's deadline.
async fn drive(
    conn: h2::client::Connection<Unvectored<TlsStream<Tcp>>, Bytes>,
    ping: Option<h2::PingPong>,
    server: uri::Authority,
) {
    let keepalive = async move {
        let Some(mut ping) = ping else {
            return std::future::pending().await;
        };
        loop {
            tokio::time::sleep(PING_EVERY).await;
            match tokio::time::timeout(PING_TIMEOUT, ping.ping(h2::Ping::opaque())).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => return format!("PING failed: {e}"),
                Err(_) => return format!("no PING answer in {PING_TIMEOUT:?}"),
            }
        }
    };
    tokio::select! {
        r = conn => {
            if let Err(e) = r {
                tracing::debug!(%server, error = %e, "HTTP/2 connection ended");
            }
        }
        why = keepalive => tracing::debug!(%server, %why, "HTTP/2 connection dropped"),
    }
}

/// The TLS stream, without vectored writes.
///
/// `h2` copies a DATA frame into its write buffer, next to the other frames of the same flush,
/// only when the payload is under its chaining threshold: 256 bytes for a transport that writes
/// vectored, 1 KiB for one that does not. A Lease update's body is about 400 bytes, so over
/// `tokio-rustls` (which says it writes vectored) every body was chained and flushed alone: one
/// TLS record and one `writev` per renewal (`strace` at 10,000 elections: 1.15 `writev` per
/// request). Vectored writes buy nothing under TLS, which encrypts into records of its own.
/// Without them, the bodies of a batch of renewals leave with their HEADERS frames, several
/// dozen per write.
struct Unvectored<T>(T);

impl<T: AsyncRead + Unpin> AsyncRead for Unvectored<T> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for Unvectored<T> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

/// The whole body: the one frame itself when it came in one (a Lease does), else the frames
/// joined.
async fn collect(body: &mut RecvStream) -> Result<Bytes, kube::Error> {
    let mut first: Option<Bytes> = None;
    let mut more: Option<BytesMut> = None;
    while let Some(chunk) = body.data().await {
        let chunk = chunk.map_err(|e| transport("HTTP/2 answer body", e))?;
        let _ = body.flow_control().release_capacity(chunk.len());
        match (&mut more, first.take()) {
            (Some(m), _) => m.extend_from_slice(&chunk),
            (None, None) => first = Some(chunk),
            (None, Some(f)) => {
                let mut m = BytesMut::with_capacity(f.len() + chunk.len());
                m.extend_from_slice(&f);
                m.extend_from_slice(&chunk);
                more = Some(m);
            }
        }
    }
    Ok(match more {
        Some(m) => m.freeze(),
        None => first.unwrap_or_default(),
    })
}

/// An error answer as kube reads it: the `Status` in the body, or one made from the text.
fn api_error(status: http::StatusCode, body: &[u8]) -> kube::Error {
    let status = serde_json::from_slice::<Status>(body).unwrap_or_else(|_| {
        let text = String::from_utf8_lossy(body);
        Status::failure(text.trim(), "Failed to parse error data").with_code(status.as_u16())
    });
    kube::Error::Api(status.boxed())
}

/// Decodes JSON after checking once that it is UTF-8: decoding bytes checks every string and
/// raw member on its own, 2.4 % of a renewal's instructions in short calls (callgrind).
fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> serde_json::Result<T> {
    match std::str::from_utf8(bytes) {
        Ok(text) => serde_json::from_str(text),
        // Decoding the bytes says where the bad byte is.
        Err(_) => serde_json::from_slice(bytes),
    }
}

/// One line of a watch: an event, or the `Status` the API server sends when the watch fails.
fn decode_event<T: DeserializeOwned>(line: &[u8]) -> kube::Result<WatchEvent<T>> {
    from_json(line).map_err(|e| match serde_json::from_slice::<Status>(line) {
        Ok(status) if status.code != 0 => kube::Error::Api(status.boxed()),
        _ => kube::Error::SerdeError(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_lines_decode_as_events_or_status() {
        let added = br#"{"type":"ADDED","object":{"apiVersion":"v1","kind":"ConfigMap","metadata":{"name":"a","resourceVersion":"7"}}}"#;
        let ev: WatchEvent<kube::api::DynamicObject> = decode_event(added).unwrap();
        assert!(
            matches!(ev, WatchEvent::Added(o) if o.metadata.resource_version.as_deref() == Some("7"))
        );
        let gone = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"too old","reason":"Expired","code":410}"#;
        let err = decode_event::<kube::api::DynamicObject>(gone).unwrap_err();
        assert!(matches!(err, kube::Error::Api(s) if s.code == 410));
        assert!(matches!(
            decode_event::<kube::api::DynamicObject>(b"{not json"),
            Err(kube::Error::SerdeError(_))
        ));
    }

    #[test]
    fn error_answers_read_as_kube_reads_them() {
        let forbidden = br#"{"kind":"Status","apiVersion":"v1","status":"Failure","message":"leases is forbidden","reason":"Forbidden","code":403}"#;
        let kube::Error::Api(s) = api_error(http::StatusCode::FORBIDDEN, forbidden) else {
            panic!("not an API error");
        };
        assert_eq!((s.code, s.reason.as_str()), (403, "Forbidden"));
        let kube::Error::Api(s) = api_error(http::StatusCode::BAD_GATEWAY, b" upstream down\n")
        else {
            panic!("not an API error");
        };
        assert_eq!((s.code, s.message.as_str()), (502, "upstream down"));
    }

    /// A server that accepts TCP but never answers the TLS handshake: every request waiting
    /// for the connection fails after one connect timeout (the whole handshake is bounded, and
    /// they all wait for the same attempt), naming the server; the next request tries again.
    #[tokio::test]
    async fn a_silent_server_fails_all_waiting_requests_after_one_connect_timeout() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let accepted = tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((conn, _)) = listener.accept().await {
                held.push(conn);
            }
        });
        let mut config = kube::Config::new(format!("https://127.0.0.1:{port}").parse().unwrap());
        config.accept_invalid_certs = true;
        config.connect_timeout = Some(Duration::from_millis(300));
        let h = Http2::new(&config).unwrap().unwrap();
        let started = tokio::time::Instant::now();
        let requests = (0..20).map(|_| {
            let h = h.clone();
            async move {
                let req = Request::get("/api/v1/namespaces/a/configmaps/b")
                    .body(Vec::new())
                    .unwrap();
                match h.request::<serde_json::Value>(req).await {
                    Err(Failure::Kube(e)) => e.to_string(),
                    _ => panic!("expected a connection failure"),
                }
            }
        });
        let errors = futures_util::future::join_all(requests).await;
        let took = started.elapsed();
        assert!(
            took < Duration::from_millis(1500),
            "{took:?}: attempts were not shared"
        );
        for e in &errors {
            assert!(
                e.contains(&format!("no connection to 127.0.0.1:{port} within 300ms")),
                "{e}"
            );
        }
        assert!(h.usable(), "a failed connect is not a refusal of HTTP/2");
        assert!(h.inner.lock().opening.is_none() && h.inner.lock().live.is_none());
        accepted.abort();
    }

    #[test]
    fn request_paths_are_joined_to_the_cluster_url() {
        let config = |url: &str| {
            let mut c = kube::Config::new(url.parse().unwrap());
            c.accept_invalid_certs = true;
            c
        };
        let h = Http2::new(&config("https://10.0.0.1:6443"))
            .unwrap()
            .unwrap();
        let u = h
            .inner
            .absolute(
                &"/api/v1/namespaces/a/configmaps/b?watch=true"
                    .parse()
                    .unwrap(),
            )
            .unwrap();
        assert_eq!(
            u.to_string(),
            "https://10.0.0.1:6443/api/v1/namespaces/a/configmaps/b?watch=true"
        );
        let h = Http2::new(&config("https://rancher.example/k8s/clusters/c-1/"))
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.inner.host.as_str(), h.inner.port),
            ("rancher.example", 443)
        );
        let u = h.inner.absolute(&"/apis/x?y=1".parse().unwrap()).unwrap();
        assert_eq!(
            u.to_string(),
            "https://rancher.example/k8s/clusters/c-1/apis/x?y=1"
        );
        let h = Http2::new(&config("https://[::1]:8443")).unwrap().unwrap();
        assert_eq!((h.inner.host.as_str(), h.inner.port), ("::1", 8443));
        // Plain HTTP (kubectl proxy) and proxies go through kube's client.
        assert!(
            Http2::new(&config("http://127.0.0.1:8001"))
                .unwrap()
                .is_none()
        );
        let mut proxied = config("https://10.0.0.1:6443");
        proxied.proxy_url = Some("http://proxy:3128".parse().unwrap());
        assert!(Http2::new(&proxied).unwrap().is_none());
    }
}
