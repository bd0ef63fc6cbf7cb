//! `leasehold-bench`: leasehold against client-go and the Rust crates, side by side on one real
//! kube-apiserver + etcd (started by the test harness), printing one table.
//!
//! ```text
//! cargo run --release -p leasehold-bench -- all [--runs N] [--window SECS] [--footprint SECS]
//!                                              [--scale 100,1000,10000] [--scale-window SECS]
//!                                              [--out docs/benchmarks.md] [--only lh-lib,..]
//! cargo run --release -p leasehold-bench -- operators [--objects 1000,10000] [--runs N]
//!                                              [--window SECS] [--out docs/benchmarks-operators.md]
//! cargo run --release -p leasehold-bench -- rollout [--replicas 5] [--runs 5]
//!                                              [--out docs/benchmarks-rollout.md]
//! cargo run --release -p leasehold-bench -- etcd [--runs 20] [--window 30]
//!                                              [--out docs/benchmarks-etcd.md]
//! cargo run --release -p leasehold-bench -- serve   # just the API server, for profiling
//! cargo run --release -p leasehold-bench -- floor   # the server's own PUT and handover, 5 rounds
//! ```
//!
//! Targets are printed as PASS/MISS beside the numbers, never asserted: the machine is noisy.

mod cand;
mod etcd;
mod operator;
mod report;
mod rollout;

use cand::{Cand, Durations, Ev, Impl, Paths, cpu_secs};
use leasehold::LockBackend as _;
use leasehold_testing::harness::{self, KubeServer};
use report::{Report, Row, Scale};
use std::{collections::BTreeMap, path::PathBuf, time::Duration};
use tokio::time::{Instant, sleep};

/// The durations every candidate runs with (except the example, whose are compiled in).
const FAST: Durations = Durations {
    lease: Duration::from_secs(2),
    renew: Duration::from_secs(1),
    retry: Duration::from_millis(250),
};
/// The scale test's durations (what a node lease costs: renew every 20 s).
const SCALE: Durations = Durations {
    lease: Duration::from_secs(60),
    renew: Duration::from_secs(40),
    retry: Duration::from_secs(20),
};

struct Opts {
    runs: usize,
    window: Duration,
    footprint: Duration,
    scale: Vec<usize>,
    scale_window: Duration,
    out: Option<PathBuf>,
    only: Option<Vec<String>>,
}

/// `--scale M,M,..` (or `none`): numbers of elections, each from 1.
fn scale_list(value: &str) -> Vec<usize> {
    if value == "none" {
        return Vec::new();
    }
    value
        .split(',')
        .map(|v| {
            v.parse::<usize>()
                .ok()
                .filter(|n| *n >= 1)
                .unwrap_or_else(|| usage(&format!("--scale: `{v}` is not a number from 1")))
        })
        .collect()
}

fn usage(msg: &str) -> ! {
    eprintln!(
        "leasehold-bench: {msg}\nusage: leasehold-bench all [--runs N] [--window SECS] [--footprint SECS] [--scale M,M,..] [--scale-window SECS] [--out FILE] [--only lh-lib,go-elector,..]\n       leasehold-bench operators [--objects N,N,..] [--runs N] [--window SECS] [--out FILE]\n       leasehold-bench etcd [--runs N] [--window SECS] [--scale M,M,..|none] [--scale-window SECS] [--out FILE]\n       leasehold-bench serve\n       leasehold-bench floor"
    );
    std::process::exit(64);
}

fn parse_opts() -> Opts {
    let mut args = std::env::args().skip(1);
    if args.next().as_deref() != Some("all") {
        usage("expected the subcommand `all`, `operators`, `serve` or `floor`");
    }
    let mut out_given = false;
    let mut o = Opts {
        runs: 20,
        window: Duration::from_secs(30),
        footprint: Duration::from_secs(60),
        scale: vec![100, 1000, 10_000],
        scale_window: Duration::from_secs(60),
        out: Some(harness::workspace_root().join("docs/benchmarks.md")),
        only: None,
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{flag}: `{v}` is not a number")))
        };
        match flag.as_str() {
            "--runs" => o.runs = num(&value).max(1) as usize,
            "--window" => o.window = Duration::from_secs(num(&value).max(1)),
            "--footprint" => o.footprint = Duration::from_secs(num(&value).max(1)),
            "--scale-window" => o.scale_window = Duration::from_secs(num(&value).max(1)),
            "--scale" => o.scale = scale_list(&value),
            "--out" => o.out = (value != "none").then(|| PathBuf::from(value)),
            "--only" => o.only = Some(value.split(',').map(str::to_owned).collect()),
            other => usage(&format!("unknown flag {other}")),
        }
        out_given |= flag == "--out";
    }
    // A run of some candidates only is a partial table: it replaces the docs only when asked.
    if o.only.is_some() && !out_given {
        o.out = None;
    }
    o
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let mut args = std::env::args().skip(1);
    let cmd = args.next();
    if cmd.as_deref() == Some("operators") {
        let opts = parse_operator_opts(args);
        rt.block_on(operators(opts));
        return;
    }
    if cmd.as_deref() == Some("rollout") {
        let mut o = rollout::Opts {
            replicas: 5,
            runs: 5,
            out: Some(harness::workspace_root().join("docs/benchmarks-rollout.md")),
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
            let num = |v: &str| {
                v.parse::<usize>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .unwrap_or_else(|| usage(&format!("{flag}: `{v}` is not a number from 1")))
            };
            match flag.as_str() {
                "--replicas" => o.replicas = num(&value),
                "--runs" => o.runs = num(&value),
                "--out" => o.out = (value != "none").then(|| PathBuf::from(value)),
                other => usage(&format!("unknown flag {other}")),
            }
        }
        rt.block_on(rollouts(o));
        return;
    }
    if cmd.as_deref() == Some("etcd") {
        let mut o = etcd::Opts {
            runs: 20,
            window: Duration::from_secs(30),
            out: Some(harness::workspace_root().join("docs/benchmarks-etcd.md")),
            scale: vec![10_000, 100_000],
            scale_window: Duration::from_secs(60),
        };
        while let Some(flag) = args.next() {
            let value = args
                .next()
                .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
            let num = |v: &str| {
                v.parse::<u64>()
                    .ok()
                    .filter(|n| *n >= 1)
                    .unwrap_or_else(|| usage(&format!("{flag}: `{v}` is not a number from 1")))
            };
            match flag.as_str() {
                "--runs" => o.runs = num(&value) as usize,
                "--window" => o.window = Duration::from_secs(num(&value)),
                "--out" => o.out = (value != "none").then(|| PathBuf::from(value)),
                "--scale" => o.scale = scale_list(&value),
                "--scale-window" => o.scale_window = Duration::from_secs(num(&value)),
                other => usage(&format!("unknown flag {other}")),
            }
        }
        rt.block_on(etcds(o));
        return;
    }
    if let Some(cmd @ ("serve" | "floor")) = cmd.as_deref() {
        if let Some(extra) = args.next() {
            usage(&format!("`{cmd}` takes no arguments, got {extra:?}"));
        }
        if cmd == "serve" {
            rt.block_on(serve());
        } else {
            rt.block_on(floor());
        }
        return;
    }
    let opts = parse_opts();
    rt.block_on(run(opts));
}

fn parse_operator_opts(mut args: impl Iterator<Item = String>) -> operator::Opts {
    let mut o = operator::Opts {
        objects: vec![1000, 10_000],
        runs: 5,
        window: Duration::from_secs(30),
        out: Some(harness::workspace_root().join("docs/benchmarks-operators.md")),
    };
    while let Some(flag) = args.next() {
        let value = args
            .next()
            .unwrap_or_else(|| usage(&format!("{flag} needs a value")));
        let num = |v: &str| {
            v.parse::<u64>()
                .unwrap_or_else(|_| usage(&format!("{flag}: `{v}` is not a number")))
        };
        match flag.as_str() {
            "--objects" => o.objects = value.split(',').map(|v| num(v) as usize).collect(),
            "--runs" => o.runs = num(&value).max(1) as usize,
            "--window" => o.window = Duration::from_secs(num(&value).max(1)),
            "--out" => o.out = (value != "none").then(|| PathBuf::from(value)),
            other => usage(&format!("unknown flag {other}")),
        }
    }
    o
}

/// `leasehold-bench operators`: see [`operator`].
async fn operators(opts: operator::Opts) {
    let root = harness::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(&cargo)
        .args(["build", "--release", "-p", "leasehold-example-operator"])
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        eprintln!("leasehold-bench: `cargo build --release -p leasehold-example-operator` failed");
        std::process::exit(1);
    }
    let binaries = operator::Binaries {
        example: root.join("target/release/example-operator"),
        cr_operator: harness::bins().cr_operator,
    };
    let _ = std::fs::create_dir_all(cand::logs());
    eprintln!("leasehold-bench: starting etcd + kube-apiserver");
    let server = KubeServer::start().await;
    operator::run(&server, &binaries, &opts).await;
}

/// `leasehold-bench etcd`: see [`etcd`].
async fn etcds(opts: etcd::Opts) {
    let root = harness::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(&cargo)
        .args([
            "build",
            "--release",
            "-p",
            "leasehold-bench",
            "--bin",
            "lh-candidate",
        ])
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success());
    let dist = std::process::Command::new("bash")
        .arg(root.join("scripts/build-dist.sh"))
        .current_dir(&root)
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.lines().last().map(|l| root.join(l.trim())));
    let (true, Some(leasehold)) = (built, dist) else {
        eprintln!("leasehold-bench: building lh-candidate or the shipped binary failed");
        std::process::exit(1);
    };
    let binaries = etcd::Binaries {
        lh_candidate: root.join("target/release/lh-candidate"),
        leasehold,
    };
    let _ = std::fs::create_dir_all(cand::logs());
    etcd::run(&binaries, &opts).await;
}

/// `leasehold-bench rollout`: see [`rollout`].
async fn rollouts(opts: rollout::Opts) {
    let root = harness::workspace_root();
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let built = std::process::Command::new(&cargo)
        .args(["build", "--release", "-p", "leasehold-cli"])
        .current_dir(&root)
        .status()
        .is_ok_and(|s| s.success());
    if !built {
        eprintln!("leasehold-bench: `cargo build --release -p leasehold-cli` failed");
        std::process::exit(1);
    }
    let bins = harness::bins();
    let target = root.join("target/release");
    let paths = Paths {
        lh_candidate: target.join("lh-candidate"),
        leasehold: target.join("leasehold"),
        go_example: bins.leader_election.clone(),
        go_elector: bins.go_elector.clone(),
        rust_peers: root.join("bench/rust-peers/target/release"),
    };
    let _ = std::fs::create_dir_all(cand::logs());
    eprintln!("leasehold-bench: starting etcd + kube-apiserver");
    let server = KubeServer::start().await;
    rollout::run(&server, &paths, &opts).await;
}

/// `leasehold-bench serve`: the bench's API server, left running for profiling by hand
/// (`perf record -p`, a candidate started against the printed kubeconfig) until Ctrl-C.
async fn serve() {
    let server = KubeServer::start().await;
    println!(
        "kube-apiserver on 127.0.0.1:{}\nKUBECONFIG={}\nCtrl-C stops it.",
        server.port(),
        server.kubeconfig("admin").display()
    );
    let _ = tokio::signal::ctrl_c().await;
}

/// `leasehold-bench floor`: the server floor ([`ServerFloor`]) five times over on one API
/// server, to see how it settles after the server starts and how much it varies.
async fn floor() {
    let server = KubeServer::start().await;
    for round in 1..=5 {
        let f = server_floor(&server, &format!("floor-{round}")).await;
        println!("round {round}: {f}");
    }
}

async fn run(opts: Opts) {
    let root = harness::workspace_root();
    let bins = harness::bins();
    let target = root.join("target/release");
    // The candidates: leasehold's release binaries, and the Rust crates' candidate programs
    // (their own workspace, so their kube versions stay out of ours).
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let build = |args: &[&str]| {
        let ok = std::process::Command::new(&cargo)
            .args(args)
            .current_dir(&root)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            eprintln!("leasehold-bench: `cargo {}` failed", args.join(" "));
        }
        ok
    };
    if !build(&["build", "--release", "-p", "leasehold-bench"]) {
        std::process::exit(1);
    }
    // The sidecar as the Kubernetes image ships it: `scripts/build-dist.sh --kube` (the `dist`
    // profile, statically linked, no etcd backend), which prints the binary's path.
    let dist = std::process::Command::new("bash")
        .args(["scripts/build-dist.sh", "--kube"])
        .current_dir(&root)
        .stderr(std::process::Stdio::inherit())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|p| root.join(p.trim()));
    let Some(dist) = dist else {
        eprintln!("leasehold-bench: `bash scripts/build-dist.sh` failed");
        std::process::exit(1);
    };
    let paths = Paths {
        lh_candidate: target.join("lh-candidate"),
        leasehold: dist,
        go_example: bins.leader_election.clone(),
        go_elector: bins.go_elector.clone(),
        rust_peers: root.join("bench/rust-peers/target/release"),
    };
    let wanted = |i: &Impl| {
        opts.only
            .as_ref()
            .is_none_or(|o| o.iter().any(|s| s == i.short()))
    };
    if [Impl::Kle, Impl::Klm, Impl::Kc].iter().any(wanted) {
        build(&[
            "build",
            "--release",
            "--locked",
            "--manifest-path",
            "bench/rust-peers/Cargo.toml",
        ]);
    }
    let impls: Vec<Impl> = Impl::ALL
        .into_iter()
        .filter(wanted)
        .filter(|i| {
            let ok = i.available(&paths);
            if !ok {
                eprintln!("leasehold-bench: {} not built ({}); skipped (scripts/build-rust-peers.sh builds it)", i.label(), i.binary(&paths).display());
            }
            ok
        })
        .collect();
    let _ = std::fs::remove_dir_all(cand::logs());
    if let Err(e) = std::fs::create_dir_all(cand::logs()) {
        eprintln!(
            "leasehold-bench: cannot create {}: {e}; candidates' output is not kept",
            cand::logs().display()
        );
    }
    eprintln!("leasehold-bench: starting etcd + kube-apiserver");
    let server = KubeServer::start().await;
    let kc = server.kubeconfig("admin");
    let mut report = Report::new(&opts.runs, FAST, SCALE);
    // The server's own cost before the candidates' handovers and again after them: the
    // target is judged against the faster PUT of the two, so a server still settling after its
    // start cannot make it easier.
    let measure_floor = |name: &'static str| {
        let server = &server;
        async move {
            let f = server_floor(server, name).await;
            eprintln!("API server's own cost: {f}");
            f
        }
    };
    report.floors.push(measure_floor("floor-before").await);

    let mut n = 0;
    let mut next = |p: &str| {
        n += 1;
        format!("{p}-{n}")
    };
    for &imp in &impls {
        let d = imp.durations(FAST);
        let mut row = Row::new(imp, d, imp.binary(&paths));
        let runs = if imp.fixed().is_some() {
            opts.runs.min(5)
        } else {
            opts.runs
        };
        eprintln!("{}: graceful handover x{runs}", imp.label());
        row.handover = handover(
            imp,
            &paths,
            &kc,
            &next("ho"),
            d,
            runs,
            rustix::process::Signal::TERM,
        )
        .await;
        if imp.fixed().is_none() {
            eprintln!("{}: crash failover x{runs}", imp.label());
            row.failover = handover(
                imp,
                &paths,
                &kc,
                &next("fo"),
                d,
                runs,
                rustix::process::Signal::KILL,
            )
            .await;
        }
        report.rows.push(row);
    }
    report.floors.push(measure_floor("floor-after").await);
    // API load, one implementation at a time (the counters are server-wide).
    eprintln!(
        "API load: baseline ({} s, no candidates)",
        opts.window.as_secs()
    );
    let baseline = load_window(&server, opts.window).await;
    for row in &mut report.rows {
        for k in [1usize, 3] {
            eprintln!(
                "{}: API load with {k} candidate(s), {} s",
                row.imp.label(),
                opts.window.as_secs()
            );
            let name = next("load");
            let mut cands = Vec::new();
            for i in 0..k {
                if let Ok(c) = Cand::spawn(row.imp, &paths, &kc, &name, &format!("c{i}"), row.d, 1)
                {
                    cands.push(c);
                }
            }
            if let Some(c) = cands.first_mut() {
                c.wait(Ev::Started, Duration::from_secs(90)).await;
            }
            sleep(Duration::from_secs(3)).await;
            let counts = load_window(&server, opts.window).await;
            let per_min: BTreeMap<String, f64> = counts
                .iter()
                .map(|(verb, v)| {
                    (
                        verb.clone(),
                        (v - baseline.get(verb).copied().unwrap_or(0.0)).max(0.0) * 60.0
                            / opts.window.as_secs_f64(),
                    )
                })
                .collect();
            if k == 1 {
                row.load1 = Some(per_min)
            } else {
                row.load3 = Some(per_min)
            }
            for c in cands {
                c.stop().await;
            }
        }
    }
    // Footprint: every implementation leading its own Lease at once, for the footprint window.
    eprintln!(
        "footprint: all candidates leading for {} s",
        opts.footprint.as_secs()
    );
    let mut cands = Vec::new();
    for (i, row) in report.rows.iter().enumerate() {
        if let Ok(mut c) = Cand::spawn(row.imp, &paths, &kc, &next("fp"), "fp", row.d, 1) {
            c.wait(Ev::Started, Duration::from_secs(90)).await;
            cands.push((i, c));
        }
    }
    // CPU is counted from when every candidate leads.
    let cands: Vec<_> = cands
        .into_iter()
        .map(|(i, c)| {
            let cpu0 = cpu_secs(c.pid).unwrap_or(0.0);
            (i, c, cpu0)
        })
        .collect();
    sleep(opts.footprint).await;
    for (i, c, cpu0) in cands {
        let row = &mut report.rows[i];
        row.rss_kib = c.rss_kib();
        row.rss_anon_file_kib =
            cand::status_kib(c.pid, "RssAnon:").zip(cand::status_kib(c.pid, "RssFile:"));
        row.cpu_per_min =
            cpu_secs(c.pid).map(|c1| (c1 - cpu0) * 60.0 / opts.footprint.as_secs_f64());
        c.stop().await;
    }
    // Scale: one process, M elections.
    for &m in &opts.scale {
        for imp in [Impl::LhLib, Impl::GoElector] {
            if !impls.contains(&imp) {
                continue;
            }
            eprintln!(
                "scale: {} with {m} elections ({} s window)",
                imp.label(),
                opts.scale_window.as_secs()
            );
            let s = scale(&server, imp, &paths, &kc, &next("sc"), m, opts.scale_window).await;
            report.scale.push(s);
        }
    }
    let table = report.table();
    println!("{table}");
    if let Some(out) = &opts.out {
        let svg = out.with_extension("svg");
        std::fs::write(&svg, report.svg()).expect("write svg");
        // The measured part is generated; what people wrote about it below (from
        // `report::READING` on) is kept until they rewrite it.
        let old = std::fs::read_to_string(out).unwrap_or_default();
        let kept = match old.find(report::READING) {
            Some(at) => {
                eprintln!(
                    "leasehold-bench: kept the hand-written `{}` of {}: bring it up to date with this run",
                    report::READING,
                    out.display()
                );
                old[at..].to_owned()
            }
            None if old.is_empty() => String::new(),
            None => {
                eprintln!(
                    "leasehold-bench: {} has no `{}` heading; nothing of it was kept",
                    out.display(),
                    report::READING
                );
                String::new()
            }
        };
        let mut text = report.markdown(
            &table,
            svg.file_name()
                .and_then(|f| f.to_str())
                .unwrap_or("benchmarks.svg"),
        );
        if !kept.is_empty() {
            text.truncate(text.trim_end().len());
            text.push_str("\n\n");
            text.push_str(&kept);
        }
        std::fs::write(out, text).expect("write report");
        eprintln!("wrote {} and {}", out.display(), svg.display());
    }
}

/// How long the server sits idle before each isolated PUT and each floor handover: half a
/// renewal interval of [`FAST`], which is how long, on average, the server has been idle when a
/// leader's release arrives (the leader renews every half renew deadline).
pub(crate) const IDLE: Duration = Duration::from_millis(250);

/// What the API server itself takes for the requests a handover is made of, measured with
/// leasehold's lock API and no elector, so that a candidate's handover can be read against it.
///
/// Every PUT here changes the record (its `renewTime`), as every renewal, release and
/// acquisition does. A PUT that changes nothing is answered without a write to etcd (the API
/// server compares the encoded object with the stored one and returns early), so it would
/// measure only part of the path: here 1.4 ms, against 2.0 to 3.3 ms for a real write.
#[derive(Clone, Copy, Debug, Default)]
pub struct ServerFloor {
    /// Median of 50 Lease PUTs sent back to back on one connection (after 10 not counted).
    pub put: Duration,
    /// Median of 20 Lease PUTs each sent after the server sat idle for [`IDLE`]: the state in
    /// which a handover's release finds it. An idle etcd and kube-apiserver answer more slowly
    /// than busy ones (etcd alone, by hand: 0.85 ms back to back, 2.5 ms 250 ms apart).
    pub put_isolated: Duration,
    /// Median of 20 bare handovers, each after [`IDLE`]: one client releases the Lease, another,
    /// whose watch is open, takes it on the event with a compare-and-swap on the version the
    /// event carried. From the release leaving to the acquisition answered: what a handover
    /// costs before any elector, signal or process is involved.
    pub handover: Duration,
}

impl std::fmt::Display for ServerFloor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        write!(
            f,
            "Lease PUT median {:.2} ms back to back, {:.2} ms isolated; bare handover {:.2} ms",
            ms(self.put),
            ms(self.put_isolated),
            ms(self.handover)
        )
    }
}

/// Measures [`ServerFloor`] on the new Lease `default/NAME`, with two clients (two
/// connections), as two candidates would have.
async fn server_floor(server: &KubeServer, name: &str) -> ServerFloor {
    use futures_util::StreamExt as _;
    use leasehold::{LeaderRecord, backend::kubernetes::LeaseLock};
    let kc = server.kubeconfig("admin");
    // The path the shipped sidecar takes.
    let connect = || async {
        leasehold::backend::kubernetes::client_with_http2(Some(&kc))
            .await
            .expect("client")
    };
    let (a, b) = (
        LeaseLock::new(connect().await, "default", name),
        LeaseLock::new(connect().await, "default", name),
    );
    let record = |holder: &str, transitions: i32| {
        let now = jiff::Timestamp::now();
        // A release writes a 1 s lease, as client-go's does.
        LeaderRecord::new(holder, if holder.is_empty() { 1 } else { 15 })
            .with_acquire_time(Some(now))
            .with_renew_time(Some(now))
            .with_leader_transitions(transitions)
    };
    let mut version = a.create(&record("a", 0)).await.expect("create");
    let mut puts = Vec::new();
    for _ in 0..60 {
        let t0 = Instant::now();
        version = a.update(&record("a", 0), &version).await.expect("update");
        puts.push(t0.elapsed());
    }
    puts.drain(..10); // warm-up
    let mut isolated = Vec::new();
    for _ in 0..20 {
        sleep(IDLE).await;
        let t0 = Instant::now();
        version = a.update(&record("a", 0), &version).await.expect("update");
        isolated.push(t0.elapsed());
    }
    let mut handovers = Vec::new();
    let (mut holder, mut standby) = ((&a, "a"), (&b, "b"));
    for term in 1..=20 {
        // The standby's watch, polled from its own task so that it is open before the release.
        let (tx, mut events) = tokio::sync::mpsc::unbounded_channel();
        let mut watch = standby.0.watch(Some(&version));
        let watching = tokio::spawn(async move {
            while let Some(item) = watch.next().await {
                if tx.send(item).is_err() {
                    break;
                }
            }
        });
        sleep(IDLE).await;
        let t0 = Instant::now();
        // The standby acts on the event alone, as an elector does, whether or not the release's
        // own answer has arrived yet.
        let release = holder.0.update(&record("", term - 1), &version);
        let take = async {
            let seen = loop {
                match tokio::time::timeout(Duration::from_secs(10), events.recv()).await {
                    Ok(Some(Ok(Some(seen)))) if seen.record.holder_identity.is_empty() => {
                        break seen.version;
                    }
                    Ok(Some(Ok(_))) => {}
                    Err(_) => panic!("server floor: no watch event within 10 s of the release"),
                    Ok(other) => panic!("server floor: the standby's watch ended: {other:?}"),
                }
            };
            let acquired = standby
                .0
                .update(&record(standby.1, term), &seen)
                .await
                .expect("acquire");
            (acquired, t0.elapsed())
        };
        let (released, (acquired, took)) = tokio::join!(release, take);
        released.expect("release");
        version = acquired;
        handovers.push(took);
        watching.abort();
        std::mem::swap(&mut holder, &mut standby);
    }
    ServerFloor {
        put: report::median(&puts),
        put_isolated: report::median(&isolated),
        handover: report::median(&handovers),
    }
}

/// Handover (`sig` = TERM) or failover (`sig` = KILL): the leader is signalled; time until the
/// other candidate prints that it leads. The signalled one is replaced by a fresh standby.
async fn handover(
    imp: Impl,
    p: &Paths,
    kc: &std::path::Path,
    name: &str,
    d: Durations,
    runs: usize,
    sig: rustix::process::Signal,
) -> Vec<Duration> {
    let limit = d.lease * 3 + Duration::from_secs(20);
    let mut seq = 0;
    let spawn = |seq: &mut usize| {
        *seq += 1;
        Cand::spawn(imp, p, kc, name, &format!("{}-{seq}", imp.short()), d, 1)
    };
    let Ok(mut leader) = spawn(&mut seq) else {
        return Vec::new();
    };
    if leader.wait(Ev::Started, limit).await.is_none() {
        eprintln!("  {}: never led", imp.label());
        return Vec::new();
    }
    let Ok(first) = spawn(&mut seq) else {
        return Vec::new();
    };
    let mut standby = Some(first);
    let mut out = Vec::new();
    for _ in 0..runs {
        let Some(mut next) = standby.take() else {
            break;
        };
        // Let the standby observe the lock (a watch, or a first poll).
        sleep(d.retry * 3 + Duration::from_millis(300)).await;
        let t0 = Instant::now();
        leader.signal(sig);
        let took = next.wait(Ev::Started, limit).await;
        let _ = tokio::time::timeout(Duration::from_secs(10), leader.child.wait()).await;
        leader = next;
        match took {
            Some(at) => out.push(at.duration_since(t0)),
            None => {
                eprintln!("  {}: no takeover within {limit:?}", imp.label());
                break;
            }
        }
        standby = spawn(&mut seq).ok();
    }
    if let Some(s) = standby {
        s.stop().await;
    }
    leader.stop().await;
    out
}

async fn load_window(server: &KubeServer, window: Duration) -> BTreeMap<String, f64> {
    let c0 = server.request_counts("leases").await;
    sleep(window).await;
    let c1 = server.request_counts("leases").await;
    c1.iter()
        .map(|(k, v)| (k.clone(), v - c0.get(k).copied().unwrap_or(0.0)))
        .collect()
}

async fn scale(
    server: &KubeServer,
    imp: Impl,
    p: &Paths,
    kc: &std::path::Path,
    name: &str,
    m: usize,
    window: Duration,
) -> Scale {
    let mut s = Scale {
        imp: Some(imp),
        m,
        ..Scale::default()
    };
    let Ok(mut c) = Cand::spawn(imp, p, kc, name, "scale", SCALE, m) else {
        return s;
    };
    let t0 = Instant::now();
    let mut started = 0;
    let limit = Duration::from_secs(300);
    while started < m {
        match tokio::time::timeout(limit.saturating_sub(t0.elapsed()), c.rx.recv()).await {
            Ok(Some((Ev::Started, _))) => started += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    s.acquired = started;
    s.acquire_secs = t0.elapsed().as_secs_f64();
    // One full renewal cycle before measuring: the acquisition burst is not steady state.
    sleep(SCALE.retry + Duration::from_secs(5)).await;
    while c.rx.try_recv().is_ok() {}
    let api_pid = server.apiserver().map(|a| a.pid()).unwrap_or(0);
    let etcd_pid = server.etcd_pid().unwrap_or(0);
    let (cpu0, api0, etcd0) = (
        cpu_secs(c.pid).unwrap_or(0.0),
        cpu_secs(api_pid).unwrap_or(0.0),
        cpu_secs(etcd_pid).unwrap_or(0.0),
    );
    let req0 = server.request_counts("leases").await;
    let until = Instant::now() + window;
    while let Ok(Some((ev, _))) = tokio::time::timeout_at(until, c.rx.recv()).await {
        if ev == Ev::Stopped {
            s.missed += 1;
        }
    }
    let req1 = server.request_counts("leases").await;
    let secs = window.as_secs_f64();
    s.cpu_secs = cpu_secs(c.pid).unwrap_or(0.0) - cpu0;
    s.api_cpu_secs = cpu_secs(api_pid).unwrap_or(0.0) - api0;
    s.etcd_cpu_secs = cpu_secs(etcd_pid).unwrap_or(0.0) - etcd0;
    s.window_secs = secs;
    s.rss_kib = c.rss_kib();
    s.req_per_sec = req1
        .iter()
        .map(|(k, v)| v - req0.get(k).copied().unwrap_or(0.0))
        .sum::<f64>()
        / secs;
    c.stop().await;
    s
}
