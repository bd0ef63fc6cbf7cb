//! The sidecar's HTTP endpoints (seed 003's status server, client-go's healthz adaptor):
//! `GET /` (JSON status), `/healthz`, `/readyz`, `/metrics`.
//!
//! Hand-written HTTP/1.1 with `Connection: close`: four GET routes answered from memory do not
//! need a server framework, and the binary stays small.

use crate::args::ReadyWhen;
use leasehold::{ElectorHandle, Leadership, Role};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::TcpListener,
    time::Instant,
};

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
            // seed 003 / the classic `election` sidecar: `name` is the leader's identity.
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
        }
    }

    fn metrics(&self) -> String {
        let mut out = String::new();
        let mut status = self.handle.status();
        if !self.is_leader() && status.role == Role::Leader {
            status.role = Role::Standby;
        }
        self.handle.metrics().encode(&self.name, &status, &mut out);
        out
    }

    /// Answers one request path: (status code, content type, body).
    fn route(&self, method: &str, path: &str) -> (u16, &'static str, String) {
        const TEXT: &str = "text/plain; charset=utf-8";
        if method != "GET" && method != "HEAD" {
            return (405, TEXT, "only GET\n".into());
        }
        let path = path.split('?').next().unwrap_or(path);
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
}

/// Serves `state` on `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, state: State) {
    loop {
        let Ok((mut conn, _)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let state = state.clone();
        tokio::spawn(async move {
            // A request line and headers fit in 8 KiB; a slow or silent client gets 5 s.
            let mut buf = vec![0u8; 8192];
            let mut len = 0;
            let read = tokio::time::timeout(Duration::from_secs(5), async {
                loop {
                    let n = conn.read(&mut buf[len..]).await?;
                    len += n;
                    if n == 0 || buf[..len].windows(4).any(|w| w == b"\r\n\r\n") || len == buf.len()
                    {
                        return Ok::<_, std::io::Error>(());
                    }
                }
            })
            .await;
            if !matches!(read, Ok(Ok(()))) {
                return;
            }
            let head = String::from_utf8_lossy(&buf[..len]);
            let mut parts = head.lines().next().unwrap_or("").split_whitespace();
            let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
            let (code, ctype, body) = state.route(method, path);
            let reason = match code {
                200 => "OK",
                404 => "Not Found",
                405 => "Method Not Allowed",
                _ => "Service Unavailable",
            };
            let mut resp = format!(
                "HTTP/1.1 {code} {reason}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nCache-Control: no-store\r\nConnection: close\r\n\r\n",
                body.len()
            );
            if method != "HEAD" {
                resp.push_str(&body);
            }
            let _ = conn.write_all(resp.as_bytes()).await;
            let _ = conn.shutdown().await;
        });
    }
}
