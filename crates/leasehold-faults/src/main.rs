//! `leasehold-faults`: the fault-injection run.
//!
//! ```text
//! leasehold-faults run [--duration 60s] [--backend kube|file|etcd|both|all] [--seed N] [--keep-logs]
//! ```
//! Five candidates contend for one lock: three `leasehold run -- leasehold-faults recorder`
//! sidecars (one of them with its wall clock five minutes off) and two library electors in one
//! process. Each leader's work is a recorder that writes to a fenced store every 10 ms. A nemesis
//! injects faults at random for the given time; then the checker reads the store's history and
//! prints a table: faults by type, overlapping terms, stale writes accepted, leaderless time. It
//! exits 1 on any overlap no whole-tree freeze explains, any stale write accepted, or any
//! leaderless interval over its bound plus the noise allowance.
//!
//! Each candidate logs with timestamps to `c0.log` .. in a directory under the temp dir, beside
//! `faults.txt` and `terms.txt` (times in seconds since the run's origin, whose wall-clock time
//! the run prints). The directory is kept when any leaderless interval is over its bound (within
//! the allowance or not) or anything else failed, and always with `--keep-logs`.
//!
//! Against Kubernetes it starts the harness's real etcd + kube-apiserver, and puts a TCP proxy
//! (latency, stall, cut-off, dropped connections) between each candidate process and the server.
//! On etcd it starts a 3-member etcd cluster, with one proxy per member for each candidate
//! process; the nemesis also kills and restarts members (the raft leader among them), stops
//! (SIGSTOP) the raft leader, and restarts the whole cluster.

mod checker;
mod store;

use checker::FaultRecord;
use leasehold::backend::etcd::{EtcdElection, etcd_client};
use leasehold::{Elector, Timing};
use leasehold_testing::harness::{ADMIN_TOKEN, EtcdCluster, KubeServer};
use leasehold_testing::proxy::{Mode, Proxy};
use rustix::process::{Pid, Signal, kill_process};
use std::{
    collections::HashMap,
    fmt::Write as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::Duration,
};
use store::Store;
use tokio::time::{Instant, sleep};

const LEASE: Duration = Duration::from_secs(3);
const NAME: &str = "faults";

fn timing_args() -> [&'static str; 6] {
    [
        "--lease-duration",
        "3s",
        "--renew-deadline",
        "2s",
        "--retry-period",
        "500ms",
    ]
}

fn timing() -> Timing {
    Timing {
        lease_duration: LEASE,
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let code = match args.first().map(String::as_str) {
        Some("recorder") => store::recorder(),
        Some("electors") => runtime().block_on(electors(&args[1..])),
        Some("run") => runtime().block_on(run(&args[1..])),
        _ => {
            eprintln!(
                "usage: leasehold-faults run [--duration 60s] [--backend kube|file|etcd|both|all] [--seed N]"
            );
            64
        }
    };
    std::process::exit(code);
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime")
}

fn flag<'a>(args: &'a [String], name: &str) -> Option<&'a str> {
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(String::as_str)
}

fn parse_duration(s: &str) -> Option<Duration> {
    let (n, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = n.parse().ok()?;
    Some(match unit {
        "ms" => Duration::from_millis(n),
        "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return None,
    })
}

/// The two library electors of the run, in one process (`leasehold-faults electors ...`).
async fn electors(args: &[String]) -> i32 {
    // Timestamped lines in the candidate's log, to explain a leaderless interval afterwards.
    let _ = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("LEASEHOLD_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .try_init();
    let ids: Vec<String> = flag(args, "--ids")
        .unwrap_or("c3,c4")
        .split(',')
        .map(str::to_owned)
        .collect();
    let store = flag(args, "--store").expect("--store").to_owned();
    let cancel = tokio_util::sync::CancellationToken::new();
    let mut tasks = Vec::new();
    for id in ids {
        let store = store.clone();
        let writer_id = id.clone();
        let on_start = move |l: leasehold::Leadership| {
            let store = store.clone();
            let id = writer_id.clone();
            tokio::spawn(async move { write_while_leading(&store, &id, l).await });
        };
        let task = match flag(args, "--backend") {
            Some("etcd") => {
                let endpoints: Vec<&str> = flag(args, "--endpoints")
                    .expect("--endpoints")
                    .split(',')
                    .collect();
                let client = etcd_client::Client::connect(&endpoints, Some(etcd_options()))
                    .await
                    .expect("etcd client");
                tokio::spawn(
                    Elector::new(EtcdElection::new(client, NAME), id, timing())
                        .expect("elector")
                        .on_started_leading(on_start)
                        .run(cancel.clone()),
                )
            }
            Some("file") => {
                let lock =
                    leasehold::backend::file::FileLock::new(flag(args, "--file").expect("--file"));
                tokio::spawn(
                    Elector::new(lock, id, timing())
                        .expect("elector")
                        .on_started_leading(on_start)
                        .run(cancel.clone()),
                )
            }
            _ => {
                let kc = PathBuf::from(flag(args, "--kubeconfig").expect("--kubeconfig"));
                let client = leasehold::backend::kubernetes::client(Some(&kc))
                    .await
                    .expect("client");
                let lock = leasehold::backend::kubernetes::LeaseLock::new(client, "default", NAME);
                tokio::spawn(
                    Elector::new(lock, id, timing())
                        .expect("elector")
                        .on_started_leading(on_start)
                        .run(cancel.clone()),
                )
            }
        };
        tasks.push(task);
    }
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    term.recv().await;
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    0
}

/// The client options the CLI uses for `--backend etcd` without TLS.
fn etcd_options() -> etcd_client::ConnectOptions {
    etcd_client::ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(5))
        .with_keep_alive(Duration::from_secs(10), Duration::from_secs(5))
        .with_require_leader(true)
}

async fn write_while_leading(store: &str, id: &str, l: leasehold::Leadership) {
    use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
    let Ok(stream) = tokio::net::TcpStream::connect(store).await else {
        return;
    };
    let (r, mut w) = stream.into_split();
    let mut lines = tokio::io::BufReader::new(r).lines();
    // `valid_until` holds even when this task runs before the election task after a freeze.
    while !l.is_lost() && Instant::now() < l.valid_until() {
        if w.write_all(format!("W {id} {}\n", l.fencing_token()).as_bytes())
            .await
            .is_err()
        {
            return;
        }
        if lines.next_line().await.ok().flatten().is_none() {
            return;
        }
        sleep(Duration::from_millis(10)).await;
    }
}

/// One candidate process (a sidecar, or the library electors' process).
struct Proc {
    ids: Vec<String>,
    cli: bool,
    child: Option<Child>,
    spawn: Box<dyn Fn() -> Child + Send>,
    /// Between it and the server: one for the API server, one per member for etcd.
    proxies: Vec<Proxy>,
}

impl Proc {
    fn pid(&self) -> Option<i32> {
        self.child.as_ref().map(|c| c.id() as i32)
    }
    fn respawn(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        self.child = Some((self.spawn)());
    }
}

fn signal(pid: i32, sig: Signal) {
    if let Some(p) = Pid::from_raw(pid) {
        let _ = kill_process(p, sig);
    }
}

/// `pid` and all its descendants (from /proc).
/// The watchdog process of the sidecar `pid`: its child running `leasehold __watchdog`.
fn watchdog_of(pid: i32) -> Option<i32> {
    tree(pid).into_iter().skip(1).find(|p| {
        std::fs::read(format!("/proc/{p}/cmdline"))
            .is_ok_and(|c| c.windows(10).any(|w| w == b"__watchdog"))
    })
}

fn tree(pid: i32) -> Vec<i32> {
    let mut parent: HashMap<i32, i32> = HashMap::new();
    if let Ok(entries) = std::fs::read_dir("/proc") {
        for e in entries.flatten() {
            let Ok(p) = e.file_name().to_string_lossy().parse::<i32>() else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{p}/stat")) else {
                continue;
            };
            let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
                continue;
            };
            let ppid = rest
                .split_whitespace()
                .nth(1)
                .and_then(|v| v.parse().ok())
                .unwrap_or(0);
            parent.insert(p, ppid);
        }
    }
    let mut out = vec![pid];
    let mut i = 0;
    while i < out.len() {
        let cur = out[i];
        out.extend(parent.iter().filter(|(_, pp)| **pp == cur).map(|(p, _)| *p));
        i += 1;
    }
    out
}

struct Rng(u64);
impl Rng {
    fn next(&mut self, n: usize) -> usize {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 % n as u64) as usize
    }
}

async fn run(args: &[String]) -> i32 {
    let duration = match flag(args, "--duration").map(|d| (d, parse_duration(d))) {
        None => Duration::from_secs(60),
        Some((_, Some(d))) if !d.is_zero() => d,
        Some((d, _)) => {
            eprintln!("leasehold-faults: --duration: `{d}` is not a duration (e.g. 60s, 10m)");
            return 64;
        }
    };
    let seed = match flag(args, "--seed").map(|s| (s, s.parse::<u64>())) {
        None => u64::from(std::process::id()) * 7919 + 1,
        Some((_, Ok(n))) => n,
        Some((s, Err(_))) => {
            eprintln!("leasehold-faults: --seed: `{s}` is not a non-negative integer");
            return 64;
        }
    };
    let backends: Vec<&str> = match flag(args, "--backend").unwrap_or("both") {
        "kube" => vec!["kube"],
        "file" => vec!["file"],
        "etcd" => vec!["etcd"],
        "both" => vec!["kube", "file"],
        "all" => vec!["kube", "file", "etcd"],
        other => {
            eprintln!(
                "leasehold-faults: --backend: `{other}` is not kube, file, etcd, both or all"
            );
            return 64;
        }
    };
    let keep_logs = args.iter().any(|a| a == "--keep-logs");
    let me = std::env::current_exe().expect("exe");
    let leasehold = me.with_file_name("leasehold");
    if !leasehold.exists() {
        eprintln!(
            "leasehold-faults: {} not found: build it with `cargo build -p leasehold-cli` (same profile)",
            leasehold.display()
        );
        return 64;
    }
    let mut failed = false;
    for backend in backends {
        println!(
            "\n== fault run on the {backend} backend: {} s, seed {seed}",
            duration.as_secs()
        );
        let report = one_run(backend, duration, seed, keep_logs, &me, &leasehold).await;
        println!("{}", report.table);
        if report.unexplained_overlaps > 0
            || report.stale_accepted > 0
            || report.token_regressions > 0
            || report.liveness_violations > 0
        {
            failed = true;
        }
    }
    if failed {
        println!(
            "FAULT RUN FAILED: unexplained overlaps, stale writes accepted, tokens out of order, or leaderless intervals over their bound (each listed above)"
        );
        1
    } else {
        println!(
            "fault run: 0 unexplained overlaps, 0 stale writes accepted, no leaderless interval over its bound + allowance"
        );
        0
    }
}

async fn one_run(
    backend: &str,
    duration: Duration,
    seed: u64,
    keep_logs: bool,
    me: &Path,
    leasehold: &Path,
) -> checker::Report {
    let origin = Instant::now();
    println!(
        "origin (0 s in the tables below): {} UTC",
        jiff::Timestamp::now().strftime("%Y-%m-%dT%H:%M:%S%.3f")
    );
    let store = Store::start(origin).await;
    let mut server = if backend == "kube" {
        Some(KubeServer::start().await)
    } else {
        None
    };
    let mut cluster = if backend == "etcd" {
        Some(EtcdCluster::start().await)
    } else {
        None
    };
    // The members' client ports, for the proxies.
    let member_ports: Vec<u16> = cluster.as_ref().map_or_else(Vec::new, |c| {
        c.urls()
            .iter()
            .map(|u| {
                u.rsplit(':')
                    .next()
                    .and_then(|p| p.parse().ok())
                    .expect("port")
            })
            .collect()
    });
    let dir =
        std::env::temp_dir().join(format!("leasehold-faults-{}-{backend}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("dir");
    let file = dir.join("lock.json");

    let mut procs: Vec<Proc> = Vec::new();
    let specs: [(&[&str], bool, Option<&str>); 4] = [
        (&["c0"], true, None),
        (&["c1"], true, None),
        (&["c2"], true, Some("5m")),
        (&["c3", "c4"], false, None),
    ];
    for (ids, cli, offset) in specs {
        let mut proxies = Vec::new();
        if let Some(s) = &server {
            proxies.push(Proxy::start(s.port()).await);
        }
        for port in &member_ports {
            proxies.push(Proxy::start(*port).await);
        }
        let kubeconfig = match (&server, proxies.first()) {
            (Some(s), Some(p)) => {
                Some(s.write_kubeconfig_for(&format!("proxy-{}", ids[0]), ADMIN_TOKEN, p.port))
            }
            _ => None,
        };
        let endpoints = (!member_ports.is_empty()).then(|| {
            proxies
                .iter()
                .map(|p| format!("http://127.0.0.1:{}", p.port))
                .collect::<Vec<_>>()
                .join(",")
        });
        let (me, leasehold, store_addr, file, ids_v) = (
            me.to_owned(),
            leasehold.to_owned(),
            store.addr.clone(),
            file.clone(),
            ids.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>(),
        );
        let log = dir.join(format!("{}.log", ids[0]));
        let id0 = ids[0].to_owned();
        let ids_joined = ids.join(",");
        let offset = offset.map(str::to_owned);
        let spawn: Box<dyn Fn() -> Child + Send> = Box::new(move || {
            let mut cmd = Command::new("setpriv");
            cmd.args(["--pdeathsig", "KILL", "--"]);
            if cli {
                cmd.arg(&leasehold)
                    .args(["run", "--name", NAME, "--id", &id0])
                    .args(timing_args());
                match (&kubeconfig, &endpoints) {
                    (Some(kc), _) => cmd
                        .args([
                            "--backend",
                            "kube",
                            "--namespace",
                            "default",
                            "--kubeconfig",
                        ])
                        .arg(kc),
                    (None, Some(e)) => cmd.args(["--backend", "etcd", "--endpoints", e]),
                    (None, None) => cmd.args(["--backend", "file", "--file"]).arg(&file),
                };
                if let Some(o) = &offset {
                    // A hidden knob that the binary accepts only for fault injection.
                    cmd.env("LEASEHOLD_FAULT_INJECTION", "1")
                        .args(["--x-clock-offset", o]);
                }
                cmd.arg("--").arg(&me).arg("recorder");
            } else {
                cmd.arg(&me)
                    .args(["electors", "--ids", &ids_joined, "--store", &store_addr]);
                match (&kubeconfig, &endpoints) {
                    (Some(kc), _) => cmd.args(["--backend", "kube", "--kubeconfig"]).arg(kc),
                    (None, Some(e)) => cmd.args(["--backend", "etcd", "--endpoints", e]),
                    (None, None) => cmd.args(["--backend", "file", "--file"]).arg(&file),
                };
            }
            let out = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(&log)
                .expect("log");
            cmd.env("STORE", &store_addr)
                .env("LEASEHOLD_LOG", "info,leasehold=trace,leasehold_core=debug")
                .stdin(Stdio::null())
                .stdout(out.try_clone().expect("log"))
                .stderr(out);
            cmd.spawn().expect("spawn candidate")
        });
        let _ = &ids_v;
        let child = Some(spawn());
        procs.push(Proc {
            ids: ids.iter().map(|s| (*s).to_owned()).collect(),
            cli,
            child,
            spawn,
            proxies,
        });
    }

    let admin = match &server {
        Some(s) => Some(
            leasehold::backend::kubernetes::client(Some(&s.kubeconfig("admin")))
                .await
                .expect("admin client")
                .kube()
                .clone(),
        ),
        None => None,
    };
    let watcher = match &cluster {
        Some(c) => Some(EtcdElection::new(
            etcd_client::Client::connect(c.urls(), Some(etcd_options()))
                .await
                .expect("etcd client"),
            NAME,
        )),
        None => None,
    };
    let holder = async |admin: &Option<kube::Client>| -> Option<String> {
        if let Some(w) = &watcher {
            let queue = tokio::time::timeout(Duration::from_secs(2), w.candidates())
                .await
                .ok()?
                .ok()?;
            return queue.into_iter().next().map(|c| c.value);
        }
        match admin {
            Some(c) => {
                let api: kube::Api<k8s_openapi::api::coordination::v1::Lease> =
                    kube::Api::namespaced(c.clone(), "default");
                let l = tokio::time::timeout(Duration::from_secs(2), api.get_opt(NAME))
                    .await
                    .ok()?
                    .ok()??;
                l.spec?.holder_identity.filter(|h| !h.is_empty())
            }
            None => {
                let v: serde_json::Value =
                    serde_json::from_slice(&std::fs::read(&file).ok()?).ok()?;
                v["holderIdentity"]
                    .as_str()
                    .filter(|h| !h.is_empty())
                    .map(str::to_owned)
            }
        }
    };

    sleep(Duration::from_secs(5)).await; // everyone up, a leader elected
    let mut rng = Rng(seed | 1);
    let mut faults: Vec<FaultRecord> = Vec::new();
    let kinds_kube = [
        "SIGKILL leader",
        "SIGTERM leader",
        "freeze leader tree",
        "freeze elector only",
        "freeze watchdog only",
        "restart kube-apiserver",
        "restart etcd",
        "proxy: stall leader",
        "proxy: cut leader off",
        "proxy: latency 300 ms",
        "proxy: drop connections",
    ];
    let kinds_file = [
        "SIGKILL leader",
        "SIGTERM leader",
        "freeze leader tree",
        "freeze elector only",
        "freeze watchdog only",
    ];
    let kinds_etcd = [
        "SIGKILL leader",
        "SIGTERM leader",
        "freeze leader tree",
        "freeze elector only",
        "freeze watchdog only",
        "kill raft leader member",
        "restart a member",
        "stop raft leader member",
        "restart whole cluster",
        "proxy: stall leader",
        "proxy: cut leader off",
        "proxy: latency 300 ms",
        "proxy: drop connections",
    ];
    let kinds: &[&str] = if server.is_some() {
        &kinds_kube
    } else if cluster.is_some() {
        &kinds_etcd
    } else {
        &kinds_file
    };
    let end = origin + duration + Duration::from_secs(5);
    while Instant::now() < end {
        let kind = kinds[rng.next(kinds.len())];
        let Some(leader) = holder(&admin).await else {
            sleep(Duration::from_millis(500)).await;
            continue;
        };
        // Only at a leader that is acting: the lock still names a candidate for a lease after
        // it died, and a fault aimed at its restarted process is no fault of the leader's.
        let acting = store.last().is_some_and(|e| {
            e.accepted && e.who == leader && origin.elapsed() < e.at + Duration::from_millis(300)
        });
        if !acting {
            sleep(Duration::from_millis(100)).await;
            continue;
        }
        let Some(idx) = procs.iter().position(|p| p.ids.contains(&leader)) else {
            sleep(Duration::from_millis(500)).await;
            continue;
        };
        if matches!(kind, "freeze elector only" | "freeze watchdog only") && !procs[idx].cli {
            continue;
        }
        let start = origin.elapsed();
        match kind {
            "SIGKILL leader" | "SIGTERM leader" => {
                let sig = if kind == "SIGKILL leader" {
                    Signal::KILL
                } else {
                    Signal::TERM
                };
                if let Some(pid) = procs[idx].pid() {
                    signal(pid, sig);
                }
                if let Some(c) = procs[idx].child.as_mut() {
                    let deadline = Instant::now() + Duration::from_secs(5);
                    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                        sleep(Duration::from_millis(20)).await;
                    }
                }
                sleep(Duration::from_secs(1)).await;
                procs[idx].respawn();
            }
            "freeze leader tree" | "freeze elector only" => {
                let Some(pid) = procs[idx].pid() else {
                    continue;
                };
                let pids = if kind == "freeze leader tree" {
                    tree(pid)
                } else {
                    vec![pid]
                };
                for p in &pids {
                    signal(*p, Signal::STOP);
                }
                sleep(LEASE + Duration::from_secs(1)).await;
                for p in &pids {
                    signal(*p, Signal::CONT);
                }
            }
            "freeze watchdog only" => {
                // The sidecar finds its watchdog unresponsive at the next renewal, stops the
                // child, releases and exits 1; the candidate is then started again.
                let Some(wd) = procs[idx].pid().and_then(watchdog_of) else {
                    continue;
                };
                signal(wd, Signal::STOP);
                if let Some(c) = procs[idx].child.as_mut() {
                    let deadline = Instant::now() + LEASE + Duration::from_secs(2);
                    while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                        sleep(Duration::from_millis(20)).await;
                    }
                }
                signal(wd, Signal::KILL);
                signal(wd, Signal::CONT);
                procs[idx].respawn();
            }
            "restart kube-apiserver" => {
                if let Some(s) = server.as_mut() {
                    s.stop_apiserver();
                    sleep(Duration::from_secs(2)).await;
                    s.restart_apiserver().await;
                }
            }
            "restart etcd" => {
                if let Some(s) = server.as_mut() {
                    s.stop_etcd();
                    sleep(Duration::from_secs(2)).await;
                    s.restart_etcd();
                    s.wait_ready(Duration::from_secs(60)).await;
                }
            }
            "kill raft leader member" | "restart a member" | "stop raft leader member" => {
                let Some(c) = cluster.as_mut() else { continue };
                let member = match kind {
                    "restart a member" => rng.next(3),
                    _ => match c.raft_leader().await {
                        Some(i) => i,
                        None => continue,
                    },
                };
                if kind == "stop raft leader member" {
                    // Hangs without closing a connection: requests to it wait for their
                    // deadlines; the other members elect a new raft leader.
                    c.signal_member(member, Signal::STOP);
                    sleep(Duration::from_secs(4)).await;
                    c.signal_member(member, Signal::CONT);
                } else {
                    c.stop_member(member);
                    sleep(Duration::from_secs(2)).await;
                    c.restart_member(member).await;
                }
            }
            "restart whole cluster" => {
                if let Some(c) = cluster.as_mut() {
                    for i in 0..3 {
                        c.stop_member(i);
                    }
                    sleep(Duration::from_secs(2)).await;
                    c.restart_all().await;
                }
            }
            "proxy: stall leader" | "proxy: cut leader off" => {
                let mode = if kind == "proxy: stall leader" {
                    Mode::Stall
                } else {
                    Mode::Cut
                };
                for p in &procs[idx].proxies {
                    p.set(mode);
                    if mode == Mode::Cut {
                        p.drop_all();
                    }
                }
                sleep(Duration::from_secs(4)).await;
                for p in &procs[idx].proxies {
                    p.set(Mode::Normal);
                }
            }
            "proxy: latency 300 ms" => {
                for p in procs.iter().flat_map(|p| &p.proxies) {
                    p.set(Mode::Latency(Duration::from_millis(300)));
                }
                sleep(Duration::from_secs(4)).await;
                for p in procs.iter().flat_map(|p| &p.proxies) {
                    p.set(Mode::Normal);
                }
            }
            "proxy: drop connections" => {
                for p in procs.iter().flat_map(|p| &p.proxies) {
                    p.drop_all();
                }
            }
            _ => {}
        }
        let target = if kind.starts_with("restart")
            || kind.ends_with("member")
            || kind == "proxy: latency 300 ms"
            || kind == "proxy: drop connections"
        {
            None
        } else {
            Some(leader.clone())
        };
        // A frozen library-elector process freezes both of its electors.
        let targets: Vec<Option<String>> = match (&target, procs[idx].cli) {
            (Some(_), false) => procs[idx].ids.iter().cloned().map(Some).collect(),
            _ => vec![target],
        };
        for target in targets {
            faults.push(FaultRecord {
                kind,
                target,
                start,
                end: origin.elapsed(),
            });
        }
        sleep(Duration::from_millis(1500 + rng.next(2000) as u64)).await;
    }
    // Let it settle, then stop everyone gracefully.
    sleep(Duration::from_secs(5)).await;
    for p in &mut procs {
        if let Some(pid) = p.pid() {
            signal(pid, Signal::TERM);
        }
    }
    for p in &mut procs {
        if let Some(mut c) = p.child.take() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while c.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                sleep(Duration::from_millis(20)).await;
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
    let run_time = origin.elapsed();
    let report = checker::check(&store.log(), &faults, LEASE, run_time);
    drop(server.take());
    drop(cluster.take());
    let failed = report.unexplained_overlaps
        + report.stale_accepted
        + report.token_regressions
        + report.liveness_violations
        > 0;
    if failed || report.over_bound > 0 || keep_logs {
        // Each candidate's log (`c0.log` ..) and the run's own records, to explain every
        // interval over its bound from what the candidates saw.
        let mut text = String::new();
        for f in &faults {
            let _ = writeln!(
                text,
                "{:.3}-{:.3} s {}{}",
                f.start.as_secs_f64(),
                f.end.as_secs_f64(),
                f.kind,
                f.target
                    .as_ref()
                    .map(|t| format!(" ({t})"))
                    .unwrap_or_default()
            );
        }
        let _ = std::fs::write(dir.join("faults.txt"), text);
        let _ = std::fs::write(dir.join("terms.txt"), checker::terms_text(&store.log()));
        println!("candidates' logs kept in {}", dir.display());
    } else {
        let _ = std::fs::remove_dir_all(&dir);
    }
    report
}
