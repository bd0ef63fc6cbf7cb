//! `leasehold step-down`: asks a running sidecar, at its `--control` address, to step down.

use crate::args::StepDownArgs;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::rt::TokioIo;
use std::time::Duration;

/// Why `step-down` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Nothing answers at the control address, or it broke off.
    #[error("cannot reach the sidecar's control address {addr}")]
    Unreachable {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// The sidecar refused the request.
    #[error("the sidecar at {addr} answered {status}: {body}")]
    Refused {
        /// The address.
        addr: std::net::SocketAddr,
        /// The HTTP status.
        status: u16,
        /// What it said.
        body: String,
    },
    /// The sidecar is in another election than `--name` says; nothing was asked of it.
    #[error("the sidecar at {addr} is in election `{actual}`, not `{expected}`; not stepping down")]
    OtherElection {
        /// The address.
        addr: std::net::SocketAddr,
        /// `--name`.
        expected: String,
        /// The sidecar's.
        actual: String,
    },
}

/// How long the whole exchange may take: the sidecar answers from memory.
const LIMIT: Duration = Duration::from_secs(5);

/// Runs `step-down`; returns the exit code.
///
/// # Errors
/// See [`Error`].
pub async fn step_down(args: StepDownArgs) -> Result<i32, Error> {
    let addr = args.control;
    if let Some(expected) = &args.name {
        // Checked first, so that a step-down aimed at the wrong sidecar asks nothing of it.
        let (_, body) = request(addr, "GET", "/").await?;
        let actual = serde_json::from_str::<serde_json::Value>(&body)
            .ok()
            .and_then(|v| v["lease"]["name"].as_str().map(str::to_owned))
            .unwrap_or_default();
        if &actual != expected {
            return Err(Error::OtherElection {
                addr,
                expected: expected.clone(),
                actual,
            });
        }
    }
    let target = match (&args.to, args.hold_off) {
        (Some(to), _) => format!("/step-down?to={}", percent_encode(to)),
        (None, Some(d)) => format!("/step-down?hold-off={}ms", d.as_millis()),
        (None, None) => "/step-down".to_owned(),
    };
    let (status, body) = request(addr, "POST", &target).await?;
    if status != 200 {
        return Err(Error::Refused {
            addr,
            status,
            body: body.trim().to_owned(),
        });
    }
    let v: serde_json::Value = serde_json::from_str(&body).unwrap_or_default();
    let identity = v["identity"].as_str().unwrap_or_default();
    if let Some(to) = v["transferred_to"].as_str() {
        say!(
            "handing over: {identity} (fencing token {}) to {to}",
            v["fencing_token"].as_u64().unwrap_or_default()
        );
        return Ok(0);
    }
    let hold_off = Duration::from_millis(v["hold_off_ms"].as_u64().unwrap_or_default());
    match v["fencing_token"].as_u64() {
        Some(token) if v["was_leading"] == true => say!(
            "stepping down: {identity} (fencing token {token}); not contending for {hold_off:?}"
        ),
        _ => say!("not leading: {identity}; not contending for {hold_off:?}"),
    }
    Ok(0)
}

/// Escapes everything but unreserved characters (RFC 3986).
fn percent_encode(s: &str) -> String {
    use std::fmt::Write as _;
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

/// One request to the sidecar: (status, body).
async fn request(
    addr: std::net::SocketAddr,
    method: &str,
    target: &str,
) -> Result<(u16, String), Error> {
    let unreachable =
        |source: Box<dyn std::error::Error + Send + Sync>| Error::Unreachable { addr, source };
    let exchange = async {
        let stream = tokio::net::TcpStream::connect(addr)
            .await
            .map_err(|e| unreachable(e.into()))?;
        let (mut send, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| unreachable(e.into()))?;
        tokio::spawn(conn);
        let req = hyper::Request::builder()
            .method(method)
            .uri(target)
            .header(hyper::header::HOST, addr.to_string())
            .body(Empty::<Bytes>::new())
            .map_err(|e| unreachable(e.into()))?;
        let resp = send
            .send_request(req)
            .await
            .map_err(|e| unreachable(e.into()))?;
        let status = resp.status().as_u16();
        let body = resp
            .into_body()
            .collect()
            .await
            .map_err(|e| unreachable(e.into()))?
            .to_bytes();
        Ok((status, String::from_utf8_lossy(&body).into_owned()))
    };
    tokio::time::timeout(LIMIT, exchange)
        .await
        .map_err(|_| unreachable(format!("no answer within {LIMIT:?}").into()))?
}
