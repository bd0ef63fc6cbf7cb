//! `--backend etcd`: the client from the flags, and `status` for an etcd election.
//!
//! The binary chooses what the library leaves to applications: rustls with ring (as for
//! Kubernetes), the system's roots when no `--etcd-ca` is given, and the endpoints, TLS and
//! credentials of the flags, which mirror `etcdctl`'s (`--endpoints`, `$ETCDCTL_ENDPOINTS`,
//! `$ETCDCTL_PASSWORD`).

use crate::{args::EtcdArgs, run::Error};
use leasehold::backend::etcd::{
    Candidate, Error as EtcdError, EtcdElection,
    etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions},
};
use std::time::Duration;

/// How long to wait between attempts while etcd cannot be reached at start.
const RETRY: Duration = Duration::from_secs(2);

/// Connects with the flags' endpoints, TLS and credentials, and reads the election once: a
/// check that etcd answers and lets this user at the election's keys.
///
/// Refused credentials, denied access and TLS failures end it at once: they do not mend
/// themselves. An etcd that cannot be reached fails `status`; `run` (`contend`) says so and
/// tries again every 2 s, as a candidate that starts before its etcd (a host booting, the
/// whole cluster restarting) should.
pub async fn connect(name: &str, args: &EtcdArgs, contend: bool) -> Result<EtcdElection, Error> {
    let options = options(args)?;
    let endpoints = args.endpoints.join(",");
    let mut said: Option<String> = None;
    loop {
        let attempt = async {
            let client = Client::connect(&args.endpoints, Some(options.clone()))
                .await
                .map_err(|e| EtcdError::classify(&e, &format!("{name}/")))?;
            let election = EtcdElection::new(client, name);
            let queue = election.candidates().await?;
            Ok::<_, EtcdError>((election, queue))
        };
        match attempt.await {
            Ok((election, queue)) => {
                if said.is_some() {
                    tracing::info!(%endpoints, "etcd answers");
                }
                for stray in queue.iter().filter(|c| c.lease == 0) {
                    tracing::error!(election = %name, key = %stray.key, "a key under the election's prefix has no lease: no candidate will ever delete it, and every candidate queued after it waits for it; delete it");
                }
                return Ok(election);
            }
            Err(e @ (EtcdError::Unreachable(_) | EtcdError::Timeout(_))) if contend => {
                let msg = e.to_string();
                if said.as_deref() != Some(msg.as_str()) {
                    let hint = hint(args, &e).trim_start();
                    tracing::warn!(%endpoints, error = %msg, hint, "cannot reach etcd; trying again every 2s");
                    said = Some(msg);
                }
                tokio::time::sleep(RETRY).await;
            }
            Err(source) => {
                let hint = hint(args, &source);
                return Err(Error::Etcd {
                    endpoints,
                    hint,
                    source,
                });
            }
        }
    }
}

/// A TLS server that requires client certificates closes the connection of a client without
/// one only after the handshake, which the client then reports as a closed connection.
/// A TLS server reached over plain HTTP/2 answers with a TLS alert and closes.
fn hint(args: &EtcdArgs, e: &EtcdError) -> &'static str {
    let tls = args.endpoints.iter().any(|e| e.starts_with("https://"));
    let closed = |m: &str| {
        ["connection closed", "broken pipe", "connection reset"]
            .iter()
            .any(|w| m.contains(w))
    };
    match e {
        EtcdError::Other(m) | EtcdError::Unreachable(m) if closed(m) => match tls {
            true if args.cert_key.is_none() => {
                " (closed right after TLS: does it require a client certificate? --etcd-cert and --etcd-key)"
            }
            false => " (closed at once: does it serve TLS? then use https:// endpoints)",
            true => "",
        },
        _ => "",
    }
}

/// The client options from the flags. Files are read here, so that a missing or unreadable one
/// is a usage error naming its flag.
fn options(args: &EtcdArgs) -> Result<ConnectOptions, Error> {
    let read = |flag: &str, path: &std::path::Path| {
        std::fs::read(path).map_err(|e| Error::Usage(format!("{flag} {}: {e}", path.display())))
    };
    let pem = |flag: &str, path: &std::path::Path, what: &str| {
        let bytes = read(flag, path)?;
        if !bytes.windows(11).any(|w| w == b"-----BEGIN ") {
            return Err(Error::Usage(format!(
                "{flag} {}: not PEM (expected {what})",
                path.display()
            )));
        }
        Ok(bytes)
    };
    // No per-request timeout here: the election gives each request its own deadline, and a
    // client-wide one would also end the long-lived watch.
    let mut o = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        // A dead connection is found by pings, not only by a request's deadline. etcd refuses
        // pings more often than every 5 s (its `--grpc-keepalive-min-time`).
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        // A member cut off from its cluster's quorum answers at once instead of holding the
        // request: the candidate then tries another member.
        .with_require_leader(true);
    if args.endpoints.iter().any(|e| e.starts_with("https://")) {
        let mut tls = TlsOptions::new();
        tls = match &args.ca {
            Some(ca) => tls.ca_certificate(Certificate::from_pem(pem(
                "--etcd-ca",
                ca,
                "CERTIFICATE blocks",
            )?)),
            None => tls.with_native_roots(),
        };
        if let Some((cert, key)) = &args.cert_key {
            tls = tls.identity(Identity::from_pem(
                pem("--etcd-cert", cert, "a CERTIFICATE block")?,
                pem("--etcd-key", key, "a PRIVATE KEY block")?,
            ));
        }
        o = o.with_tls(tls);
    }
    if let Some((user, password)) = &args.user {
        // Tokens expire (etcd's --auth-token-ttl, 5 min by default, or a JWT's lifetime): a
        // candidate cut off for longer logs in again instead of failing forever.
        o = o
            .with_user(user.clone(), password.0.clone())
            .with_auto_token_refresh(true);
    }
    Ok(o)
}

/// `leasehold status --backend etcd`: the queue, leader first.
pub async fn status(
    election: &EtcdElection,
    lock: &crate::args::LockArgs,
    json: bool,
) -> Result<i32, Error> {
    let endpoints = lock
        .etcd
        .as_ref()
        .map(|e| e.endpoints.join(","))
        .unwrap_or_default();
    let queue = election.candidates().await.map_err(|source| Error::Etcd {
        endpoints: endpoints.clone(),
        hint: "",
        source,
    })?;
    let describe = leasehold::Election::describe(election);
    let ttls = election.lease_ttls(&queue).await;
    if json {
        let list: Vec<serde_json::Value> = queue
            .iter()
            .zip(&ttls)
            .map(|(c, ttl)| {
                serde_json::json!({
                    "key": c.key,
                    "value": c.value,
                    "create_revision": c.create_revision,
                    "lease": format!("{:x}", c.lease),
                    "lease_ttl_seconds": ttl,
                })
            })
            .collect();
        let leader = queue.first();
        say!(
            "{}",
            serde_json::json!({
                "lock": describe,
                "endpoints": endpoints,
                "holder": leader.map(|c| c.value.as_str()),
                "fencing_token": leader.map(|c| c.create_revision),
                "candidates": list,
            })
        );
        return Ok(0);
    }
    say!("lock:            {describe} ({endpoints})");
    let Some(leader) = queue.first() else {
        say!("holder:          (none: no candidate is queued)");
        return Ok(0);
    };
    say!("holder:          {}", leader.value);
    say!(
        "fencing token:   {} (the leader key's create revision)",
        leader.create_revision
    );
    say!("queue:");
    for (i, (c, ttl)) in queue.iter().zip(&ttls).enumerate() {
        say!("  {}. {}", i + 1, line(c, *ttl));
    }
    Ok(0)
}

fn line(c: &Candidate, ttl: Option<i64>) -> String {
    let lease = match (c.lease, ttl) {
        (0, _) => {
            "no lease: a stray key that nobody will delete, holding up everyone after it".to_owned()
        }
        (l, Some(t)) => format!("lease {l:x}, {t}s left"),
        (l, None) => format!("lease {l:x}"),
    };
    format!(
        "{}  key {}, revision {}, {lease}",
        c.value, c.key, c.create_revision
    )
}
