//! The sidecar's HTTP endpoints (the classic `election` sidecar's status server, client-go's
//! healthz adaptor): `GET /` (JSON status), `/healthz`, `/readyz`, `/metrics`; and on the
//! control listener only (`--control`, loopback), `POST /step-down`.
//!
//! Served by hyper's HTTP/1.1 server, one request per connection, within [`Limits`]: a bounded
//! number of connections, each with a deadline for its request head and for the whole
//! exchange. The sidecar shares one thread with the election, and every connection holds a
//! file descriptor the lock's own requests may need, so idle, slowly written or stuck clients
//! must neither pile up nor keep a new probe waiting.

use crate::args::ReadyWhen;
use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Incoming, header, server::conn::http1};
use hyper_util::rt::{TokioIo, TokioTimer};
use leasehold::{ElectorHandle, Leadership, Role, metrics};
use std::{
    collections::VecDeque,
    convert::Infallible,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::{net::TcpListener, time::Instant};
use tokio_util::sync::CancellationToken;

/// What the endpoints answer from.
#[derive(Clone)]
pub struct State {
    /// The election's status and metrics.
    pub handle: ElectorHandle,
    /// The current term, while leading: its `valid_until` bounds what `/` and `/healthz` claim.
    pub term: Arc<Mutex<Option<Leadership>>>,
    /// Set when the election task has ended unexpectedly.
    pub elector_dead: Arc<std::sync::atomic::AtomicBool>,
    /// The lock's name and namespace (namespace empty for the file backend).
    pub name: String,
    /// The lock's namespace.
    pub namespace: String,
    /// This candidate's identity.
    pub identity: String,
    /// When `/readyz` is ready.
    pub ready_when: ReadyWhen,
    /// How long past its step-down time a leader that still believes it leads is unhealthy.
    pub healthz_grace: Duration,
    /// This listener serves requests that move leadership (`--control`, a loopback address).
    /// Never the `--http` one, which probes and scrapers reach without authentication.
    pub control: bool,
    /// The hold-off of a step-down that names none: the lease duration, by which every
    /// client-go candidate, polling, has seen the release.
    pub default_hold_off: Duration,
}

// === impl State ===

impl State {
    /// Whether this candidate leads right now: the elector says so *and* the term's deadline
    /// has not passed (a stalled election task cannot make this answer stale).
    fn is_leader(&self) -> bool {
        self.handle.is_leader()
            && self
                .term
                .lock()
                .ok()
                .and_then(|t| {
                    t.as_ref()
                        .map(|l| !l.is_lost() && l.valid_until() > Instant::now())
                })
                .unwrap_or(false)
    }

    fn status_json(&self) -> String {
        let status = self.handle.status();
        let leading = self.is_leader();
        let record = status.record.as_ref();
        let body = serde_json::json!({
            // As the classic `election` sidecar: `name` is the leader's identity.
            "name": status.leader,
            "leader": status.leader,
            "is_leader": leading,
            "node": self.identity,
            "timestamp": jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%SZ").to_string(),
            "fencing_token": if leading { status.fencing_token.map(|t| t.0) } else { None },
            "lease": {
                "name": self.name,
                "namespace": self.namespace,
                "renew_time": record.and_then(|r| r.renew_time).map(|t| t.to_string()),
                "transitions": record.map(|r| r.leader_transitions),
            },
        });
        body.to_string()
    }

    /// Unhealthy when this instance believes it leads but has not renewed for longer than the
    /// renew deadline plus the grace (client-go's `HealthzAdaptor`), or the elector has died.
    fn healthz(&self) -> Result<String, String> {
        if self.elector_dead.load(std::sync::atomic::Ordering::Relaxed) {
            return Err("election task has ended".into());
        }
        if self.handle.status().role == Role::Leader {
            let until = self
                .term
                .lock()
                .ok()
                .and_then(|t| t.as_ref().map(Leadership::valid_until));
            if let Some(until) = until {
                let now = Instant::now();
                if now > until + self.healthz_grace {
                    return Err(format!(
                        "believes it leads but has not renewed for {:.1} s past its renew deadline",
                        now.duration_since(until).as_secs_f64()
                    ));
                }
            }
        }
        Ok("ok".into())
    }

    fn readyz(&self) -> Result<String, String> {
        match self.ready_when {
            ReadyWhen::Leader if self.is_leader() => Ok("ok: leading".into()),
            ReadyWhen::Leader => Err("not leading".into()),
            ReadyWhen::Observed if self.handle.status().observed => Ok("ok".into()),
            ReadyWhen::Observed => Err("lock not observed yet".into()),
            ReadyWhen::Elected => {
                let status = self.handle.status();
                if self.is_leader() {
                    Ok("ok: leading".into())
                } else if status.observed
                    && !status.leader.is_empty()
                    && status.leader != leasehold::backend::UNKNOWN_LEADER
                {
                    Ok(format!("ok: {} leads", status.leader))
                } else {
                    Err("no leader yet".into())
                }
            }
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let status = self.handle.status();
        let election = metrics::Election::new(&self.name, self.handle.metrics(), &status)
            .leading(self.is_leader());
        metrics::encode(&[election], &mut out);
        out
    }

    /// `POST /step-down[?hold-off=DUR]`: steps down (if leading) and sits out the hold-off.
    fn step_down(&self, query: Option<&str>) -> (u16, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        if !self.control {
            return (
                403,
                TEXT,
                "step-down is served only on the --control address (loopback), not on --http\n"
                    .into(),
            );
        }
        let mut hold_off = self.default_hold_off;
        let mut to = None;
        for pair in query
            .unwrap_or_default()
            .split('&')
            .filter(|p| !p.is_empty())
        {
            match pair.split_once('=') {
                Some(("hold-off", v)) => match crate::args::parse_duration(v) {
                    Ok(d) => hold_off = d,
                    Err(e) => return (400, TEXT, format!("hold-off: {e}\n")),
                },
                Some(("to", v)) => match percent_decode(v) {
                    Some(v) => to = Some(v),
                    None => {
                        return (
                            400,
                            TEXT,
                            "to: not a percent-encoded UTF-8 identity\n".into(),
                        );
                    }
                },
                _ => {
                    let shown: String = pair.chars().take(64).collect();
                    return (
                        400,
                        TEXT,
                        format!("unknown parameter `{shown}` (expected hold-off=DUR or to=ID)\n"),
                    );
                }
            }
        }
        let term = self.handle.leadership();
        if let Some(to) = to {
            return match self.handle.transfer(&to) {
                Ok(()) => {
                    tracing::info!(to = %to, "transfer requested on the control address");
                    let body = serde_json::json!({
                        "name": self.name,
                        "identity": self.identity,
                        "transferred_to": to,
                        "fencing_token": term.map(|t| t.fencing_token().0),
                    });
                    (200, "application/json", body.to_string() + "\n")
                }
                Err(
                    e @ (leasehold::TransferError::NotLeading
                    | leasehold::TransferError::NotNextInLine { .. }),
                ) => (409, TEXT, format!("{e}\n")),
                Err(e) => (400, TEXT, format!("{e}\n")),
            };
        }
        let was_leading = self.handle.step_down(hold_off);
        tracing::info!(
            was_leading,
            ?hold_off,
            "step-down requested on the control address"
        );
        let body = serde_json::json!({
            "name": self.name,
            "identity": self.identity,
            "was_leading": was_leading,
            "fencing_token": term.filter(|_| was_leading).map(|t| t.fencing_token().0),
            "hold_off_ms": u64::try_from(hold_off.as_millis()).unwrap_or(u64::MAX),
        });
        (200, "application/json", body.to_string() + "\n")
    }

    /// Answers one request: (status code, content type, body).
    fn route(&self, method: &str, path_and_query: &str) -> (u16, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        let (path, query) = match path_and_query.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (path_and_query, None),
        };
        if method == "POST" && path == "/step-down" {
            return self.step_down(query);
        }
        if method != "GET" && method != "HEAD" {
            return (
                405,
                TEXT,
                "only GET (and POST /step-down on --control)\n".into(),
            );
        }
        let check = |r: Result<String, String>| match r {
            Ok(m) => (200, TEXT, m + "\n"),
            Err(m) => (503, TEXT, m + "\n"),
        };
        match path {
            "/" => (200, "application/json", self.status_json()),
            "/healthz" | "/livez" => check(self.healthz()),
            "/readyz" => check(self.readyz()),
            "/metrics" => (
                200,
                "text/plain; version=0.0.4; charset=utf-8",
                self.metrics(),
            ),
            _ => (404, TEXT, "not found\n".into()),
        }
    }

    /// Answers `req`.
    fn respond(&self, req: &Request<Incoming>) -> Response<Full<Bytes>> {
        let target = req
            .uri()
            .path_and_query()
            .map_or_else(|| req.uri().path(), |p| p.as_str());
        let (code, ctype, body) = self.route(req.method().as_str(), target);
        let mut resp = Response::new(Full::new(Bytes::from(body)));
        *resp.status_mut() =
            StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static(ctype),
        );
        headers.insert(
            header::CACHE_CONTROL,
            header::HeaderValue::from_static("no-store"),
        );
        resp
    }
}

/// Decodes `%XX` escapes (and `+` as a space): `None` for a bad escape or bytes that are not
/// UTF-8.
fn percent_decode(s: &str) -> Option<String> {
    let mut out = Vec::with_capacity(s.len());
    let mut bytes = s.bytes();
    while let Some(b) = bytes.next() {
        out.push(match b {
            b'%' => {
                let hex = [bytes.next()?, bytes.next()?];
                u8::from_str_radix(std::str::from_utf8(&hex).ok()?, 16).ok()?
            }
            b'+' => b' ',
            b => b,
        });
    }
    String::from_utf8(out).ok()
}

/// How the server bounds its clients. A probe or a scrape is one small request answered from
/// memory in microseconds, so real clients never come near these; they only decide how long
/// an idle, slow or stuck connection may hold a slot and a file descriptor.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Connections held at once. A new connection at the limit closes the oldest one rather
    /// than wait for a slot: the newcomer is most likely a probe that must be answered now,
    /// and the oldest has had the longest to send its request (a real one takes microseconds).
    /// So however many connections a client opens and leaves idle, a new one is answered at
    /// once, and the sidecar's file descriptors stay bounded.
    pub connections: usize,
    /// Time from accepting a connection to having its request line and headers; not extended
    /// by bytes that trickle in.
    pub head: Duration,
    /// Time for the whole exchange, from accepting the connection to writing the response.
    pub exchange: Duration,
}

// === impl Limits ===

impl Limits {
    /// Far above the handful of probes and scrapers that query a sidecar, and a small part of
    /// the 1,024 open files most services may hold.
    pub const DEFAULT_CONNECTIONS: usize = 128;
    /// Twice the kubelet's default probe timeout (1 s).
    pub const DEFAULT_HEAD: Duration = Duration::from_secs(2);
    /// Room for a scraper that reads slowly, still well under the kubelet's probe period.
    pub const DEFAULT_EXCHANGE: Duration = Duration::from_secs(5);
}

impl Default for Limits {
    /// [`DEFAULT_CONNECTIONS`](Self::DEFAULT_CONNECTIONS),
    /// [`DEFAULT_HEAD`](Self::DEFAULT_HEAD), [`DEFAULT_EXCHANGE`](Self::DEFAULT_EXCHANGE).
    fn default() -> Self {
        Self {
            connections: Self::DEFAULT_CONNECTIONS,
            head: Self::DEFAULT_HEAD,
            exchange: Self::DEFAULT_EXCHANGE,
        }
    }
}

/// The connections being served, oldest first, each with the token that closes it.
#[derive(Default)]
struct Open {
    next: u64,
    conns: VecDeque<(u64, CancellationToken)>,
}

/// A connection's place in [`Open`], given up when its task ends however it ends.
struct Slot {
    open: Arc<Mutex<Open>>,
    id: u64,
}

// === impl Slot ===

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.open.lock().unwrap_or_else(PoisonError::into_inner);
        // Ids increase, so the queue is sorted by id.
        if let Ok(i) = open.conns.binary_search_by_key(&self.id, |(id, _)| *id) {
            open.conns.remove(i);
        }
    }
}

/// Serves `state` on `listener` within [`Limits::default`] until the task is dropped.
pub async fn serve(listener: TcpListener, state: State) {
    serve_with(listener, state, Limits::default()).await;
}

/// Serves `state` on `listener` within `limits` until the task is dropped.
pub async fn serve_with(listener: TcpListener, state: State, limits: Limits) {
    let state = Arc::new(state);
    let open = Arc::new(Mutex::new(Open::default()));
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.head)
        .keep_alive(false)
        // The smallest hyper allows: a request head here is a line and a few headers.
        .max_buf_size(8192);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors or memory: wait for some to be freed.
                tracing::debug!(error = %e, "cannot accept an HTTP connection");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let token = CancellationToken::new();
        let (id, evicted) = {
            let mut open = open.lock().unwrap_or_else(PoisonError::into_inner);
            let evicted = if open.conns.len() >= limits.connections.max(1) {
                open.conns.pop_front()
            } else {
                None
            };
            let id = open.next;
            open.next += 1;
            open.conns.push_back((id, token.clone()));
            (id, evicted)
        };
        if let Some((_, oldest)) = evicted {
            oldest.cancel();
        }
        let slot = Slot {
            open: Arc::clone(&open),
            id,
        };
        let state = Arc::clone(&state);
        let conn = builder.serve_connection(
            TokioIo::new(stream),
            hyper::service::service_fn(move |req| {
                let resp = state.respond(&req);
                async move { Ok::<_, Infallible>(resp) }
            }),
        );
        tokio::spawn(async move {
            let _slot = slot;
            tokio::select! {
                biased;
                () = token.cancelled() => {}
                _ = tokio::time::timeout(limits.exchange, conn) => {}
            }
        });
        // Let the new connection (and any closed one) run before the next accept: on this
        // one thread, a burst of accepts must not close a connection before it was read.
        tokio::task::yield_now().await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use leasehold::{Elector, Timing, backend::file::FileLock};
    use tokio::{
        io::{AsyncReadExt as _, AsyncWriteExt as _},
        net::TcpStream,
        time::timeout,
    };

    fn state() -> State {
        let lock = FileLock::new("/nonexistent/never-opened.json");
        let elector = Elector::new(lock, "a", Timing::default()).unwrap();
        State {
            handle: elector.handle(),
            term: Arc::default(),
            elector_dead: Arc::default(),
            name: "t".into(),
            namespace: String::new(),
            identity: "a".into(),
            ready_when: ReadyWhen::Observed,
            healthz_grace: Duration::from_secs(1),
            control: false,
            default_hold_off: Duration::from_secs(15),
        }
    }

    #[test]
    fn ready_when_elected_waits_for_a_leader() {
        let mut s = state();
        s.ready_when = ReadyWhen::Elected;
        assert_eq!(s.readyz(), Err("no leader yet".to_owned()));
    }

    /// `GET /healthz` as a new client: the response, or why there was none within 1 s.
    async fn healthz(addr: std::net::SocketAddr) -> Result<String, String> {
        timeout(Duration::from_secs(1), async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .map_err(|e| e.to_string())?;
            let mut resp = String::new();
            s.read_to_string(&mut resp)
                .await
                .map_err(|e| e.to_string())?;
            Ok(resp)
        })
        .await
        .map_err(|_| "no answer within 1 s".to_owned())?
    }

    /// Reads until the server closes the connection: how long that took.
    async fn closed_after(s: &mut TcpStream, limit: Duration) -> Option<Duration> {
        let t0 = Instant::now();
        let mut buf = [0u8; 1024];
        timeout(limit, async {
            loop {
                match s.read(&mut buf).await {
                    Ok(0) | Err(_) => return t0.elapsed(),
                    Ok(_) => {}
                }
            }
        })
        .await
        .ok()
    }

    #[tokio::test]
    async fn at_the_limit_a_new_client_closes_the_oldest_connection() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            connections: 2,
            head: Duration::from_secs(30),
            exchange: Duration::from_secs(30),
        };
        let server = tokio::spawn(serve_with(listener, state(), limits));
        let mut oldest = TcpStream::connect(addr).await.unwrap();
        let mut second = TcpStream::connect(addr).await.unwrap();
        let resp = healthz(addr).await.unwrap();
        assert!(resp.starts_with("HTTP/1.1 200 OK\r\n"), "{resp}");
        assert!(resp.ends_with("\r\n\r\nok\n"), "{resp}");
        assert!(
            closed_after(&mut oldest, Duration::from_secs(1))
                .await
                .is_some(),
            "the oldest idle connection made room"
        );
        // An answered client leaves at once; with a new idle one the set is full again, and
        // the next newcomer closes the next oldest.
        let _third = TcpStream::connect(addr).await.unwrap();
        assert!(healthz(addr).await.unwrap().starts_with("HTTP/1.1 200"));
        assert!(
            closed_after(&mut second, Duration::from_secs(1))
                .await
                .is_some()
        );
        server.abort();
    }

    #[tokio::test]
    async fn a_request_head_that_trickles_in_is_cut_off_at_its_deadline() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let limits = Limits {
            connections: 16,
            head: Duration::from_millis(300),
            exchange: Duration::from_secs(30),
        };
        let server = tokio::spawn(serve_with(listener, state(), limits));
        let mut slow = TcpStream::connect(addr).await.unwrap();
        slow.write_all(b"GET /healthz HTTP/1.1\r\n").await.unwrap();
        let trickle = async {
            // A header byte every 50 ms: never idle, never done.
            loop {
                tokio::time::sleep(Duration::from_millis(50)).await;
                if slow.write_all(b"X-Slow: a\r\n").await.is_err() {
                    return;
                }
            }
        };
        let t0 = Instant::now();
        let _ = timeout(Duration::from_secs(2), trickle).await;
        let took = t0.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "the server closed the connection after {took:?}"
        );
        let mut idle = TcpStream::connect(addr).await.unwrap();
        let took = closed_after(&mut idle, Duration::from_secs(2)).await;
        assert!(
            took.is_some_and(|t| t < Duration::from_secs(1)),
            "an idle connection closed after {took:?}"
        );
        server.abort();
    }
}
