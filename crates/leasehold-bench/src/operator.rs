//! `leasehold-bench operators`: how soon a new leader's controller does useful work after a
//! handover, for the example operator (`examples/configmap-operator`) with warm standbys and
//! with its controller started cold on acquisition, and for a controller-runtime operator in Go
//! (`crates/leasehold-testing/go/controller-runtime-peer`) with `EnableWarmup` off and on.
//!
//! Every variant reconciles the same labelled ConfigMaps into the same derived ConfigMaps, with
//! the same durations, on one API server. Per variant and number of objects: the time from the
//! leader's SIGTERM, and from its SIGKILL, to the successor's first completed reconcile; the
//! RSS and CPU of a standby; the API requests per minute of three replicas.

use crate::{
    FAST,
    cand::{cpu_secs, logs, rss_kib},
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::{
    Api,
    api::{ListParams, ObjectMeta, PostParams},
};
use leasehold_testing::harness::KubeServer;
use rustix::process::Signal;
use std::{
    collections::BTreeMap,
    fmt::Write as _,
    io::Write as _,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};
use tokio::{
    io::{AsyncBufReadExt as _, BufReader},
    process::{Child, Command},
    sync::mpsc,
    time::{Instant, sleep},
};

/// The operators compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Variant {
    /// The example operator: informers on every replica, the controller only while leading.
    LhWarm,
    /// The example operator with `--cold`: watches and controller started on acquisition.
    LhCold,
    /// controller-runtime, `EnableWarmup` off: the manager starts its caches when elected.
    CrCold,
    /// controller-runtime, `EnableWarmup` on: sources started before election.
    CrWarm,
}

impl Variant {
    const ALL: [Variant; 4] = [Self::LhWarm, Self::LhCold, Self::CrCold, Self::CrWarm];

    fn label(self) -> &'static str {
        match self {
            Self::LhWarm => "leasehold example, warm standbys",
            Self::LhCold => "leasehold example, controller started on acquisition",
            Self::CrCold => "controller-runtime, EnableWarmup off",
            Self::CrWarm => "controller-runtime, EnableWarmup on",
        }
    }

    fn short(self) -> &'static str {
        match self {
            Self::LhWarm => "lh-warm",
            Self::LhCold => "lh-cold",
            Self::CrCold => "cr-cold",
            Self::CrWarm => "cr-warm",
        }
    }

    fn command(self, p: &Binaries, kc: &Path, ns: &str, lease: &str, id: &str) -> Command {
        let s = |d: Duration| d.as_secs_f64().to_string();
        match self {
            Self::LhWarm | Self::LhCold => {
                let mut c = Command::new(&p.example);
                c.arg("--kubeconfig").arg(kc);
                c.args(["--namespace", ns, "--lease", lease, "--id", id]);
                c.args(["--lease-duration", &s(FAST.lease)]);
                c.args(["--renew-deadline", &s(FAST.renew)]);
                c.args(["--retry-period", &s(FAST.retry)]);
                if self == Self::LhCold {
                    c.arg("--cold");
                }
                c
            }
            Self::CrCold | Self::CrWarm => {
                let g = |d: Duration| format!("{}ms", d.as_millis());
                let mut c = Command::new(&p.cr_operator);
                c.arg("-kubeconfig").arg(kc);
                c.args(["-namespace", ns, "-lease-name", lease, "-id", id]);
                c.args(["-lease-duration", &g(FAST.lease)]);
                c.args(["-renew-deadline", &g(FAST.renew)]);
                c.args(["-retry-period", &g(FAST.retry)]);
                if self == Self::CrWarm {
                    c.arg("-warmup");
                }
                c
            }
        }
    }
}

/// The two operator binaries.
pub struct Binaries {
    /// `example-operator`, release build.
    pub example: PathBuf,
    /// `cr-operator`, from `scripts/build-servers.sh`.
    pub cr_operator: PathBuf,
}

/// One replica: its process and the event lines it printed, stamped when read.
struct Replica {
    child: Child,
    pid: i32,
    rx: mpsc::UnboundedReceiver<(Instant, String)>,
}

impl Replica {
    fn spawn(v: Variant, p: &Binaries, kc: &Path, ns: &str, lease: &str, id: &str) -> Option<Self> {
        let mut c = v.command(p, kc, ns, lease, id);
        c.stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = c
            .spawn()
            .map_err(|e| eprintln!("leasehold-bench: cannot start {}: {e}", v.label()))
            .ok()?;
        let pid = child.id().map_or(0, |p| p as i32);
        let (tx, rx) = mpsc::unbounded_channel();
        let log = logs().join(format!("{lease}-{id}.log"));
        let started = Instant::now();
        let out = child.stdout.take()?;
        let err = child.stderr.take()?;
        for (stream, is_err) in [
            (
                Box::new(out) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
                false,
            ),
            (Box::new(err), true),
        ] {
            let tx = tx.clone();
            let mut file = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .ok();
            tokio::spawn(async move {
                let mut lines = BufReader::new(stream).lines();
                while let Ok(Some(line)) = lines.next_line().await {
                    if !is_err {
                        let _ = tx.send((Instant::now(), line.clone()));
                    }
                    if let Some(f) = &mut file {
                        let at = started.elapsed().as_secs_f64();
                        let _ =
                            writeln!(f, "{at:10.4} {} {line}", if is_err { "err" } else { "out" });
                    }
                }
            });
        }
        Some(Self { child, pid, rx })
    }

    /// Waits for the next line starting with `prefix`, up to `limit`.
    async fn wait(&mut self, prefix: &str, limit: Duration) -> Option<Instant> {
        let until = Instant::now() + limit;
        loop {
            match tokio::time::timeout_at(until, self.rx.recv()).await {
                Ok(Some((at, line))) if line.starts_with(prefix) => return Some(at),
                Ok(Some(_)) => {}
                _ => return None,
            }
        }
    }

    fn signal(&self, sig: Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// Waits for it to exit (SIGKILL after 10 s).
    async fn reap(mut self) {
        if tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
    }
}

/// The results of one variant at one number of objects.
#[derive(Default)]
struct Cell {
    sigterm: Vec<Duration>,
    sigkill: Vec<Duration>,
    standby_rss_kib: Option<u64>,
    standby_cpu_per_min: Option<f64>,
    requests_per_min: Option<f64>,
}

/// Options of `leasehold-bench operators`.
pub struct Opts {
    /// Numbers of ConfigMaps.
    pub objects: Vec<usize>,
    /// Handovers per signal.
    pub runs: usize,
    /// The window for the standby's CPU and the three replicas' requests.
    pub window: Duration,
    /// Where to write the table (Markdown).
    pub out: Option<PathBuf>,
}

const SOURCE_LABEL: &str = "example.leasehold.dev/source";
const DERIVED_LABEL: &str = "example.leasehold.dev/derived-from";

/// Runs every variant at every number of objects on `server`, and prints the table.
pub async fn run(server: &KubeServer, p: &Binaries, opts: &Opts) {
    let kc = server.kubeconfig("admin");
    let client = server.client("admin").await;
    let mut cells: BTreeMap<(usize, &'static str), Cell> = BTreeMap::new();
    for &n in &opts.objects {
        let ns = format!("operators-{n}");
        eprintln!("operators: {n} source ConfigMaps in {ns}");
        populate(&client, &ns, n).await;
        // The first leader derives every object once; afterwards every variant finds them
        // current and writes nothing, so each handover measures the controller, not the writes.
        converge(p, &kc, &ns, n).await;
        // Standbys list the namespace after their start: give them time to be warm.
        let settle = Duration::from_secs(2) + Duration::from_millis(n as u64);
        for v in Variant::ALL {
            let mut cell = Cell::default();
            let lease = format!("{}-{n}", v.short());
            for (sig, times) in [
                (Signal::TERM, &mut cell.sigterm),
                (Signal::KILL, &mut cell.sigkill),
            ] {
                eprintln!(
                    "operators: {} at {n}: {} x{}",
                    v.label(),
                    if sig == Signal::TERM {
                        "SIGTERM"
                    } else {
                        "SIGKILL"
                    },
                    opts.runs
                );
                handovers(v, p, &kc, &ns, &lease, sig, opts.runs, settle, times).await;
            }
            eprintln!(
                "operators: {} at {n}: a standby, and 3 replicas' requests",
                v.label()
            );
            footprint(
                server,
                v,
                p,
                &kc,
                &ns,
                &lease,
                settle,
                opts.window,
                &mut cell,
            )
            .await;
            cells.insert((n, v.short()), cell);
        }
    }
    let table = table(opts, &cells);
    println!("{table}");
    if let Some(out) = &opts.out {
        // What people wrote about a run (from `report::READING` on) is kept.
        let old = std::fs::read_to_string(out).unwrap_or_default();
        let text = match old.find(crate::report::READING) {
            Some(at) => {
                eprintln!(
                    "leasehold-bench: kept the hand-written `{}` of {}: bring it up to date with this run",
                    crate::report::READING,
                    out.display()
                );
                format!("{}\n{}", table.trim_end(), &old[at..])
            }
            None => table.clone(),
        };
        match std::fs::write(out, text) {
            Ok(()) => eprintln!("wrote {}", out.display()),
            Err(e) => eprintln!("leasehold-bench: cannot write {}: {e}", out.display()),
        }
    }
}

/// Creates namespace `ns` with `n` labelled source ConfigMaps (idempotent).
async fn populate(client: &kube::Client, ns: &str, n: usize) {
    let namespaces = Api::<Namespace>::all(client.clone());
    let meta = ObjectMeta {
        name: Some(ns.into()),
        ..ObjectMeta::default()
    };
    let _ = namespaces
        .create(
            &PostParams::default(),
            &Namespace {
                metadata: meta,
                ..Namespace::default()
            },
        )
        .await;
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let have = api
        .list_metadata(&ListParams::default().labels(SOURCE_LABEL))
        .await
        .map_or(0, |l| l.items.len());
    use futures_util::StreamExt as _;
    futures_util::stream::iter(have..n)
        .for_each_concurrent(16, |i| {
            let api = api.clone();
            async move {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("source-{i:05}")),
                        labels: Some(BTreeMap::from([(SOURCE_LABEL.into(), "true".into())])),
                        ..ObjectMeta::default()
                    },
                    data: Some(BTreeMap::from([("value".into(), format!("value {i}"))])),
                    ..ConfigMap::default()
                };
                let _ = api.create(&PostParams::default(), &cm).await;
            }
        })
        .await;
}

/// Runs the example operator until every source has its derived object.
async fn converge(p: &Binaries, kc: &Path, ns: &str, n: usize) {
    let client = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::read_from(kc).expect("kubeconfig"),
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kubeconfig"),
    )
    .expect("client");
    let api = Api::<ConfigMap>::namespaced(client, ns);
    let Some(r) = Replica::spawn(Variant::LhWarm, p, kc, ns, "converge", "converge") else {
        return;
    };
    let start = Instant::now();
    loop {
        let derived = api
            .list_metadata(&ListParams::default().labels(DERIVED_LABEL))
            .await
            .map_or(0, |l| l.items.len());
        if derived >= n || start.elapsed() > Duration::from_secs(600) {
            eprintln!(
                "operators: {derived} derived objects after {:?}",
                start.elapsed()
            );
            break;
        }
        sleep(Duration::from_secs(1)).await;
    }
    r.signal(Signal::TERM);
    r.reap().await;
}

/// `runs` handovers by `sig`: a leader, a warm standby, the signal, the standby's first
/// reconcile. The standby then leads, and a new standby starts beside it.
#[allow(clippy::too_many_arguments)]
async fn handovers(
    v: Variant,
    p: &Binaries,
    kc: &Path,
    ns: &str,
    lease: &str,
    sig: Signal,
    runs: usize,
    settle: Duration,
    times: &mut Vec<Duration>,
) {
    let limit = Duration::from_secs(120);
    let mut id = 0;
    let spawn = |id: &mut usize| {
        *id += 1;
        Replica::spawn(
            v,
            p,
            kc,
            ns,
            lease,
            &format!(
                "r{id}-{}",
                if sig == Signal::TERM { "term" } else { "kill" }
            ),
        )
    };
    let Some(mut leader) = spawn(&mut id) else {
        return;
    };
    if leader.wait("first-reconcile", limit).await.is_none() {
        eprintln!("operators: {} never reconciled", v.label());
        return;
    }
    for _ in 0..runs {
        let Some(mut standby) = spawn(&mut id) else {
            return;
        };
        sleep(settle).await;
        let at = Instant::now();
        leader.signal(sig);
        match standby.wait("first-reconcile", limit).await {
            Some(first) => times.push(first - at),
            None => eprintln!(
                "operators: {}: no first reconcile within {limit:?}",
                v.label()
            ),
        }
        leader.reap().await;
        leader = standby;
    }
    leader.signal(Signal::TERM);
    leader.reap().await;
}

/// A standby's RSS and CPU, and three replicas' API requests per minute.
#[allow(clippy::too_many_arguments)]
async fn footprint(
    server: &KubeServer,
    v: Variant,
    p: &Binaries,
    kc: &Path,
    ns: &str,
    lease: &str,
    settle: Duration,
    window: Duration,
    cell: &mut Cell,
) {
    let mut replicas = Vec::new();
    for i in 0..3 {
        if let Some(r) = Replica::spawn(v, p, kc, ns, lease, &format!("fp{i}")) {
            replicas.push(r);
        }
    }
    if let Some(first) = replicas.first_mut() {
        first
            .wait("first-reconcile", Duration::from_secs(120))
            .await;
    }
    sleep(settle).await;
    let standby = replicas.last().map_or(0, |r| r.pid);
    let cpu0 = cpu_secs(standby);
    let requests = || async {
        let mut total = 0.0;
        for resource in ["leases", "configmaps"] {
            total += server.request_counts(resource).await.values().sum::<f64>();
        }
        total
    };
    let r0 = requests().await;
    sleep(window).await;
    let r1 = requests().await;
    cell.standby_rss_kib = rss_kib(standby);
    cell.standby_cpu_per_min = cpu0
        .zip(cpu_secs(standby))
        .map(|(a, b)| (b - a) * 60.0 / window.as_secs_f64());
    // The two reads of /metrics are themselves not configmaps or leases requests.
    cell.requests_per_min = Some((r1 - r0) * 60.0 / window.as_secs_f64());
    for r in replicas {
        r.signal(Signal::TERM);
        r.reap().await;
    }
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len().checked_sub(1)? / 2).copied()
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 100.0 {
        format!("{ms:.1} ms")
    } else {
        format!("{ms:.0} ms")
    }
}

fn spread(v: &[Duration]) -> String {
    match (median(v), v.iter().min(), v.iter().max()) {
        (Some(m), Some(lo), Some(hi)) => {
            format!("{} ({}–{}, n={})", ms(m), ms(*lo), ms(*hi), v.len())
        }
        _ => "–".into(),
    }
}

fn table(opts: &Opts, cells: &BTreeMap<(usize, &'static str), Cell>) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Operators: time to the first reconcile after a handover\n\n`cargo run --release -p leasehold-bench -- operators` (this file is written by it; the part from \"## Reading the results\" on is kept).\n\nDurations: lease {:?}, renew deadline {:?}, retry period {:?}, for every variant. \
         From the signal to the old leader to the new leader's first completed reconcile (its output line, read through a pipe).\n",
        FAST.lease, FAST.renew, FAST.retry
    );
    let _ = writeln!(
        t,
        "| operator | ConfigMaps | SIGTERM → first reconcile, median (min–max) | SIGKILL → first reconcile | standby RSS | standby CPU | requests/min, 3 replicas |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for &n in &opts.objects {
        for v in Variant::ALL {
            let Some(c) = cells.get(&(n, v.short())) else {
                continue;
            };
            let _ = writeln!(
                t,
                "| {} | {n} | {} | {} | {} | {} | {} |",
                v.label(),
                spread(&c.sigterm),
                spread(&c.sigkill),
                c.standby_rss_kib
                    .map_or("–".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                c.standby_cpu_per_min
                    .map_or("–".into(), |s| format!("{:.2} s/min", s)),
                c.requests_per_min.map_or("–".into(), |r| format!("{r:.0}")),
            );
        }
    }
    // The targets, at the largest number of objects measured.
    let Some(&n) = opts.objects.iter().max() else {
        return t;
    };
    let get = |v: Variant| cells.get(&(n, v.short()));
    let term = |v: Variant| get(v).and_then(|c| median(&c.sigterm));
    let verdict = |ok: bool| if ok { "PASS" } else { "MISS" };
    let _ = writeln!(t, "\nTargets at {n} ConfigMaps:\n");
    if let (Some(lh), Some(cr)) = (term(Variant::LhWarm), term(Variant::CrCold)) {
        let _ = writeln!(
            t,
            "- warm leasehold's SIGTERM → first reconcile {} vs controller-runtime without warm-up {}: 1/{:.1} (target ≤ 1/10): **{}**",
            ms(lh),
            ms(cr),
            cr.as_secs_f64() / lh.as_secs_f64().max(1e-9),
            verdict(lh * 10 <= cr)
        );
    }
    if let (Some(lh), Some(cr)) = (term(Variant::LhWarm), term(Variant::CrWarm)) {
        let _ = writeln!(
            t,
            "- warm leasehold's SIGTERM → first reconcile {} vs controller-runtime with warm-up {} (target: below): **{}**",
            ms(lh),
            ms(cr),
            verdict(lh < cr)
        );
    }
    let rss = |v: Variant| get(v).and_then(|c| c.standby_rss_kib);
    if let (Some(lh), Some(cr)) = (rss(Variant::LhWarm), rss(Variant::CrWarm)) {
        let _ = writeln!(
            t,
            "- a warm standby's RSS: leasehold {:.1} MiB vs controller-runtime with warm-up {:.1} MiB (target: at or below): **{}**",
            lh as f64 / 1024.0,
            cr as f64 / 1024.0,
            verdict(lh <= cr)
        );
    }
    t
}
