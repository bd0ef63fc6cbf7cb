//! Health-gated candidacy (`--health-cmd`, `--health-url`): a candidate whose probe fails does
//! not contend, and a leader whose probe fails `--health-failures` times in a row hands over.
//!
//! The probe runs every `--health-period`, bounded by `--health-timeout` (a probe that hangs is
//! a failure, and is killed). The decision is a small sans-IO [`Gate`]; the task around it only
//! runs probes and asks the elector to step down ([`leasehold::ElectorHandle::step_down`]) with a
//! hold-off that outlasts the next probe, again after each failed one. So an unhealthy leader
//! stops its work and releases (a healthy standby takes over at once; with none, the lock stays
//! free), an unhealthy standby sits out, and a candidate contends again at most a period and a
//! timeout after its probe passes. Until the first probe passes, a new candidate sits out: a
//! replica that cannot serve never takes the lease, not even for the first seconds.

use leasehold::ElectorHandle;
use std::time::Duration;
use tokio::time::Instant;

/// What decides health.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Probe {
    /// A shell command (`/bin/sh -c`); exit status 0 is healthy.
    Command(String),
    /// An `http://` URL; a 2xx answer to a GET is healthy.
    Url(String),
}

/// `--health-*`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HealthArgs {
    /// The probe.
    pub probe: Probe,
    /// `--health-period` (default 5 s).
    pub period: Duration,
    /// `--health-timeout` (default 2 s).
    pub timeout: Duration,
    /// `--health-failures` (default 3): failures in a row that make a healthy candidate
    /// unhealthy.
    pub failures: u32,
}

/// Whether the candidate may contend, from its probe results.
#[derive(Debug)]
pub(crate) struct Gate {
    failures_allowed: u32,
    /// Failures in a row.
    failing: u32,
    /// `None` until the first probe passes.
    healthy: Option<bool>,
}

/// What a probe result changes.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    /// Healthy (again, or still): contend.
    Contend {
        /// It was not healthy before this result.
        recovered: bool,
    },
    /// Not healthy: do not contend (and step down if leading).
    SitOut {
        /// It was healthy before this result.
        turned: bool,
    },
    /// A failure within the allowance: nothing changes yet.
    Tolerated,
}

// === impl Gate ===

impl Gate {
    pub(crate) fn new(failures_allowed: u32) -> Self {
        Self {
            failures_allowed: failures_allowed.max(1),
            failing: 0,
            healthy: None,
        }
    }

    /// Takes one probe result.
    pub(crate) fn observe(&mut self, ok: bool) -> Verdict {
        if ok {
            self.failing = 0;
            let recovered = self.healthy != Some(true);
            self.healthy = Some(true);
            return Verdict::Contend { recovered };
        }
        self.failing = self.failing.saturating_add(1);
        match self.healthy {
            Some(true) if self.failing < self.failures_allowed => Verdict::Tolerated,
            Some(true) => {
                self.healthy = Some(false);
                Verdict::SitOut { turned: true }
            }
            _ => Verdict::SitOut { turned: false },
        }
    }
}

/// Runs the probe every period until the task is dropped, gating `handle`'s candidacy.
pub(crate) async fn run(args: HealthArgs, handle: ElectorHandle) {
    let what = match &args.probe {
        Probe::Command(c) => format!("--health-cmd `{c}`"),
        Probe::Url(u) => format!("--health-url {u}"),
    };
    // Outlasts the next probe and its timeout, so a failing candidate never contends between
    // two probes; renewed after each failure.
    let hold_off = args.period + args.timeout + Duration::from_millis(500);
    let mut gate = Gate::new(args.failures);
    handle.step_down(hold_off);
    let mut last_failure: Option<String> = None;
    let mut next = Instant::now();
    loop {
        tokio::time::sleep_until(next).await;
        next = Instant::now() + args.period;
        let result = probe(&args.probe, args.timeout).await;
        let ok = result.is_ok();
        if let Err(why) = &result
            && last_failure.as_ref() != Some(why)
        {
            tracing::warn!(probe = %what, "health probe failed: {why}");
        }
        last_failure = result.err();
        match gate.observe(ok) {
            Verdict::Contend { recovered: true } => {
                tracing::info!(probe = %what, "health probe passes; contending");
                handle.resume();
            }
            Verdict::Contend { recovered: false } | Verdict::Tolerated => {}
            Verdict::SitOut { turned } => {
                let leading = handle.step_down(hold_off);
                if turned || leading {
                    tracing::warn!(
                        probe = %what,
                        failures = args.failures,
                        leading,
                        "unhealthy: {}",
                        if leading {
                            "stepping down so that a healthy standby takes over"
                        } else {
                            "not contending"
                        }
                    );
                }
            }
        }
    }
}

/// One probe: `Ok` if healthy, else why not.
async fn probe(probe: &Probe, timeout: Duration) -> Result<(), String> {
    match probe {
        Probe::Command(cmd) => {
            // In a process group of its own, so that a probe that hangs is killed whole (the
            // shell and whatever it started).
            let mut child = tokio::process::Command::new("/bin/sh")
                .args(["-c", cmd])
                .process_group(0)
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .kill_on_drop(true)
                .spawn()
                .map_err(|e| format!("cannot start /bin/sh: {e}"))?;
            match tokio::time::timeout(timeout, child.wait()).await {
                Err(_) => {
                    if let Some(pid) = child
                        .id()
                        .and_then(|p| i32::try_from(p).ok())
                        .and_then(rustix::process::Pid::from_raw)
                    {
                        let _ =
                            rustix::process::kill_process_group(pid, rustix::process::Signal::KILL);
                    }
                    let _ = child.kill().await;
                    Err(format!("no result within {timeout:?}; killed"))
                }
                Ok(Err(e)) => Err(format!("cannot wait for it: {e}")),
                Ok(Ok(s)) if s.success() => Ok(()),
                Ok(Ok(s)) => Err(match s.code() {
                    Some(127) => "exit 127 (command not found)".to_owned(),
                    Some(126) => "exit 126 (not executable)".to_owned(),
                    Some(c) => format!("exit {c}"),
                    None => format!("{s}"),
                }),
            }
        }
        Probe::Url(url) => match tokio::time::timeout(timeout, get(url)).await {
            Err(_) => Err(format!("no answer within {timeout:?}")),
            Ok(r) => r,
        },
    }
}

/// `GET url` (`http://` only, checked when parsed): `Ok` on a 2xx answer.
async fn get(url: &str) -> Result<(), String> {
    use http_body_util::Empty;
    let uri: hyper::Uri = url.parse().map_err(|e| format!("bad URL: {e}"))?;
    let host = uri.host().unwrap_or_default().to_owned();
    let port = uri.port_u16().unwrap_or(80);
    let stream = tokio::net::TcpStream::connect((host.as_str(), port))
        .await
        .map_err(|e| format!("cannot connect: {e}"))?;
    let (mut send, conn) =
        hyper::client::conn::http1::handshake(hyper_util::rt::TokioIo::new(stream))
            .await
            .map_err(|e| format!("HTTP: {e}"))?;
    tokio::spawn(conn);
    let target = uri.path_and_query().map_or("/", |p| p.as_str());
    let req = hyper::Request::get(target)
        .header(
            hyper::header::HOST,
            uri.authority().map_or(host.clone(), ToString::to_string),
        )
        .body(Empty::<bytes::Bytes>::new())
        .map_err(|e| format!("bad request: {e}"))?;
    let resp = send
        .send_request(req)
        .await
        .map_err(|e| format!("HTTP: {e}"))?;
    if resp.status().is_success() {
        Ok(())
    } else {
        Err(format!("answered {}", resp.status()))
    }
}

/// Checks `--health-url`: `http://HOST[:PORT]/PATH`.
pub(crate) fn check_url(url: &str) -> Result<(), String> {
    let uri: hyper::Uri = url
        .parse()
        .map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    if uri.scheme_str() != Some("http") {
        return Err(format!(
            "`{url}`: only http:// is supported (the probe is a local check; use --health-cmd for anything else)"
        ));
    }
    if uri.host().is_none_or(str::is_empty) {
        return Err(format!("`{url}` has no host"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_new_candidate_sits_out_until_its_first_probe_passes() {
        let mut g = Gate::new(3);
        assert_eq!(g.observe(false), Verdict::SitOut { turned: false });
        assert_eq!(g.observe(false), Verdict::SitOut { turned: false });
        assert_eq!(g.observe(true), Verdict::Contend { recovered: true });
        assert_eq!(g.observe(true), Verdict::Contend { recovered: false });
    }

    #[test]
    fn a_healthy_candidate_turns_unhealthy_after_the_failures_in_a_row_and_recovers_at_once() {
        let mut g = Gate::new(3);
        g.observe(true);
        assert_eq!(g.observe(false), Verdict::Tolerated);
        assert_eq!(g.observe(false), Verdict::Tolerated);
        // A pass in between starts the count again.
        assert_eq!(g.observe(true), Verdict::Contend { recovered: false });
        assert_eq!(g.observe(false), Verdict::Tolerated);
        assert_eq!(g.observe(false), Verdict::Tolerated);
        assert_eq!(g.observe(false), Verdict::SitOut { turned: true });
        assert_eq!(g.observe(false), Verdict::SitOut { turned: false });
        assert_eq!(g.observe(true), Verdict::Contend { recovered: true });
    }

    #[test]
    fn one_failure_allowed_means_the_first_failure_counts() {
        let mut g = Gate::new(1);
        g.observe(true);
        assert_eq!(g.observe(false), Verdict::SitOut { turned: true });
        let mut g = Gate::new(0);
        g.observe(true);
        assert_eq!(
            g.observe(false),
            Verdict::SitOut { turned: true },
            "0 reads as 1"
        );
    }

    #[test]
    fn only_plain_http_urls_with_a_host_are_probes() {
        assert!(check_url("http://127.0.0.1:8080/healthz").is_ok());
        assert!(
            check_url("https://x/healthz")
                .unwrap_err()
                .contains("only http://")
        );
        assert!(check_url("x y").unwrap_err().contains("not a URL"));
        assert!(check_url("/healthz").is_err());
    }
}
