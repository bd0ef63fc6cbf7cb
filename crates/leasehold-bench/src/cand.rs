//! The candidates under test: how to start each, and how to read when it leads.

use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::mpsc,
    time::Instant,
};

/// Lease duration, renew deadline, retry period.
#[derive(Clone, Copy, Debug)]
pub struct Durations {
    pub lease: Duration,
    pub renew: Duration,
    pub retry: Duration,
}

/// One implementation under test.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Impl {
    LhLib,
    LhSidecar,
    GoExample,
    GoElector,
    Kle,
    Klm,
    Kc,
}

/// Where the binaries are.
#[derive(Clone, Debug)]
pub struct Paths {
    pub lh_candidate: PathBuf,
    pub leasehold: PathBuf,
    pub go_example: PathBuf,
    pub go_elector: PathBuf,
    pub rust_peers: PathBuf,
}

/// What a candidate reported.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ev {
    Started,
    Stopped,
}

// === impl Impl ===

impl Impl {
    pub const ALL: [Impl; 7] = [
        Impl::LhLib,
        Impl::LhSidecar,
        Impl::GoElector,
        Impl::GoExample,
        Impl::Kle,
        Impl::Klm,
        Impl::Kc,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Impl::LhLib => "leasehold (library)",
            Impl::LhSidecar => "leasehold run (sidecar)",
            Impl::GoExample => "client-go example (as shipped)",
            Impl::GoElector => "client-go (go-elector)",
            Impl::Kle => "kube-leader-election",
            Impl::Klm => "kube-lease-manager",
            Impl::Kc => "kube-coordinate",
        }
    }

    pub fn short(self) -> &'static str {
        match self {
            Impl::LhLib => "lh-lib",
            Impl::LhSidecar => "lh-sidecar",
            Impl::GoExample => "go-example",
            Impl::GoElector => "go-elector",
            Impl::Kle => "kle",
            Impl::Klm => "klm",
            Impl::Kc => "kc",
        }
    }

    pub fn binary(self, p: &Paths) -> PathBuf {
        match self {
            Impl::LhLib => p.lh_candidate.clone(),
            Impl::LhSidecar => p.leasehold.clone(),
            Impl::GoExample => p.go_example.clone(),
            Impl::GoElector => p.go_elector.clone(),
            Impl::Kle => p.rust_peers.join("kle-candidate"),
            Impl::Klm => p.rust_peers.join("klm-candidate"),
            Impl::Kc => p.rust_peers.join("kc-candidate"),
        }
    }

    /// The example's durations are compiled in (60 s / 15 s / 5 s).
    pub fn fixed(self) -> Option<Durations> {
        (self == Impl::GoExample).then_some(Durations {
            lease: Duration::from_secs(60),
            renew: Duration::from_secs(15),
            retry: Duration::from_secs(5),
        })
    }

    /// The durations this candidate runs with: `fast`, except where the crate cannot express
    /// them (kube-coordinate needs every duration ≥ 1 s; kube-lease-manager renews in whole
    /// seconds), and the example's compiled-in ones.
    pub fn durations(self, fast: Durations) -> Durations {
        match self {
            Impl::GoExample => self.fixed().unwrap_or(fast),
            Impl::Kc => Durations {
                lease: Duration::from_secs(2),
                renew: Duration::from_millis(1500),
                retry: Duration::from_secs(1),
            },
            Impl::Klm => Durations {
                lease: Duration::from_secs(2),
                renew: Duration::from_secs(1),
                retry: Duration::from_secs(1),
            },
            _ => fast,
        }
    }

    pub fn available(self, p: &Paths) -> bool {
        self.binary(p).exists()
    }

    fn command(
        self,
        p: &Paths,
        kc: &Path,
        name: &str,
        id: &str,
        d: Durations,
        count: usize,
    ) -> Command {
        let mut c = Command::new(self.binary(p));
        let ms = |d: Duration| d.as_millis().to_string();
        let kc = kc.display().to_string();
        match self {
            Impl::LhLib | Impl::Kle | Impl::Klm | Impl::Kc => {
                c.args([
                    "--kubeconfig",
                    &kc,
                    "--namespace",
                    "default",
                    "--name",
                    name,
                    "--id",
                    id,
                ]);
                c.args([
                    "--lease-duration-ms",
                    &ms(d.lease),
                    "--renew-deadline-ms",
                    &ms(d.renew),
                    "--retry-period-ms",
                    &ms(d.retry),
                ]);
                c.args(["--count", &count.to_string()]);
            }
            Impl::LhSidecar => {
                c.args([
                    "run",
                    "--kubeconfig",
                    &kc,
                    "--namespace",
                    "default",
                    "--name",
                    name,
                    "--id",
                    id,
                    "--no-events",
                ]);
                c.args([
                    "--lease-duration",
                    &format!("{}ms", ms(d.lease)),
                    "--renew-deadline",
                    &format!("{}ms", ms(d.renew)),
                    "--retry-period",
                    &format!("{}ms", ms(d.retry)),
                ]);
                c.env("LEASEHOLD_LOG", "warn");
            }
            Impl::GoExample => {
                c.args([
                    format!("-kubeconfig={kc}"),
                    format!("-id={id}"),
                    format!("-lease-lock-name={name}"),
                    "-lease-lock-namespace=default".into(),
                ]);
            }
            Impl::GoElector => {
                c.args([
                    format!("-kubeconfig={kc}"),
                    format!("-id={id}"),
                    format!("-name={name}"),
                    "-namespace=default".into(),
                ]);
                c.args([
                    format!("-lease-duration={}ms", ms(d.lease)),
                    format!("-renew-deadline={}ms", ms(d.renew)),
                    format!("-retry-period={}ms", ms(d.retry)),
                ]);
                if count > 1 {
                    c.args([format!("-count={count}"), "-qps=5000".into()]);
                }
            }
        }
        c
    }

    fn parse(self, line: &str, stderr: bool) -> Option<Ev> {
        match (self, stderr) {
            (Impl::GoExample, true) if line.contains("Controller loop...") => Some(Ev::Started),
            (Impl::GoExample, true) if line.contains("leader lost") => Some(Ev::Stopped),
            (Impl::LhSidecar, false) if line.starts_with("leading: ") => Some(Ev::Started),
            (Impl::LhSidecar, false) if line.starts_with("stopped leading") => Some(Ev::Stopped),
            (Impl::LhSidecar | Impl::GoExample, _) => None,
            (_, false) if line.starts_with("started ") => Some(Ev::Started),
            (_, false) if line.starts_with("stopped ") => Some(Ev::Stopped),
            _ => None,
        }
    }
}

/// A running candidate process.
pub struct Cand {
    pub child: Child,
    pub pid: i32,
    pub rx: mpsc::UnboundedReceiver<(Ev, Instant)>,
}

// === impl Cand ===

impl Cand {
    pub fn spawn(
        imp: Impl,
        p: &Paths,
        kc: &Path,
        name: &str,
        id: &str,
        d: Durations,
        count: usize,
    ) -> std::io::Result<Self> {
        Self::spawn_with(imp, p, kc, name, id, d, count, &[])
    }

    /// [`spawn`](Self::spawn) with `extra` arguments after the usual ones.
    #[allow(clippy::too_many_arguments)]
    pub fn spawn_with(
        imp: Impl,
        p: &Paths,
        kc: &Path,
        name: &str,
        id: &str,
        d: Durations,
        count: usize,
        extra: &[&str],
    ) -> std::io::Result<Self> {
        let mut c = imp.command(p, kc, name, id, d, count);
        c.args(extra);
        Self::from_command(c, &format!("{name}-{id}"), move |line, is_err| {
            imp.parse(line, is_err)
        })
    }

    /// Starts `c`, reading its events with `parse` (a line, and whether it came on stderr), and
    /// keeping its output in `logs()/LOG.log`.
    pub fn from_command(
        mut c: Command,
        log: &str,
        parse: impl Fn(&str, bool) -> Option<Ev> + Clone + Send + 'static,
    ) -> std::io::Result<Self> {
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = c.spawn()?;
        let pid = child.id().map_or(0, |p| p as i32);
        let (tx, rx) = mpsc::unbounded_channel();
        let out = child.stdout.take().expect("piped");
        let err = child.stderr.take().expect("piped");
        // Everything the candidate prints is kept, to explain an odd figure after the run.
        let log = logs().join(format!("{log}.log"));
        let started = Instant::now();
        for (stream, is_err) in [
            (
                Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                false,
            ),
            (Box::new(err), true),
        ] {
            let tx = tx.clone();
            let parse = parse.clone();
            // Appends of one line each, so the two streams interleave by line.
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .ok();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if let Some(ev) = parse(&line, is_err) {
                        let _ = tx.send((ev, Instant::now()));
                    }
                    if let Some(f) = &mut file {
                        let at = started.elapsed().as_secs_f64();
                        let which = if is_err { "err" } else { "out" };
                        let _ = writeln!(f, "{at:10.4} {which} {line}");
                    }
                }
            });
        }
        Ok(Self { child, pid, rx })
    }

    /// Waits for the next `ev`, up to `limit`.
    pub async fn wait(&mut self, ev: Ev, limit: Duration) -> Option<Instant> {
        let until = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some((e, at))) if e == ev => return Some(at),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    pub fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// SIGTERM, then SIGKILL after 5 s; reaps.
    pub async fn stop(mut self) {
        self.signal(rustix::process::Signal::TERM);
        if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }

    /// Resident set size in KiB, from /proc.
    pub fn rss_kib(&self) -> Option<u64> {
        rss_kib(self.pid)
    }
}

/// Where each candidate's output is kept (`NAME-ID.log`, lines stamped with seconds since its
/// start): `target/bench-logs`, emptied at the start of a run.
pub fn logs() -> PathBuf {
    leasehold_testing::harness::workspace_root().join("target/bench-logs")
}

/// Resident set size of `pid` in KiB.
pub fn rss_kib(pid: i32) -> Option<u64> {
    status_kib(pid, "VmRSS:")
}

/// A `kB` field of /proc/PID/status (`VmRSS:`, `RssAnon:`, `RssFile:`).
pub fn status_kib(pid: i32, field: &str) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// User + system CPU time of `pid` in seconds, from /proc (clock ticks of 10 ms).
pub fn cpu_secs(pid: i32) -> Option<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = s.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}
