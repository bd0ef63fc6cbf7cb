//! `leasehold-bench etcd`: leasehold on etcd against etcd's own election clients, on one etcd.
//!
//! Candidates: the leasehold library (`lh-candidate --etcd`), the `leasehold run --backend etcd`
//! sidecar as it ships, `etcdctl elect` and a Go program on `concurrency.Election`
//! (`etcd-elector`). For each: graceful handover (SIGTERM to the leader, until the next one
//! says it leads) and crash failover (SIGKILL), each over fresh pairs of processes; the gRPC
//! messages etcd receives per minute with 3 candidates in steady state (etcd's own
//! `grpc_server_msg_received_total`, which counts every unary request and every stream
//! message, keepalives too); and the leader's RSS. etcd's own put latency is measured in the
//! same run, for the target: a handover median within 3× of it.

use crate::cand::{Cand, Ev};
use leasehold::backend::etcd::etcd_client;
use leasehold_testing::harness::{EtcdServer, bins, unique};
use std::{fmt::Write as _, path::PathBuf, process::Stdio, time::Duration};
use tokio::{process::Command, time::Instant};

/// What to run.
pub struct Opts {
    /// Handovers and failovers per candidate.
    pub runs: usize,
    /// The steady-state window.
    pub window: Duration,
    /// Where the table goes (also printed).
    pub out: Option<PathBuf>,
    /// The numbers of elections for the scale rows (empty: none).
    pub scale: Vec<usize>,
    /// The scale rows' steady-state window.
    pub scale_window: Duration,
}

/// The scale rows' session TTL, for both: leasehold's lease duration (renew deadline 20 s, a
/// keepalive every 10 s) and the Go program's `-ttl` (a keepalive every third of it, 10 s).
const SCALE_TTL: Duration = Duration::from_secs(30);

/// How long a scale row waits for its process to lead every election.
const SCALE_ACQUIRE: Duration = Duration::from_secs(180);

/// When the scale rows' RSS at rest is read, after acquiring: past Go's forced collection.
const SCALE_REST: Duration = Duration::from_secs(150);

/// One process holding `m` elections on one session.
struct ScaleRow {
    who: Who,
    m: usize,
    acquired: usize,
    acquire: Duration,
    cpu_secs: f64,
    etcd_cpu_secs: f64,
    window: Duration,
    msgs_per_sec: Option<f64>,
    /// Right after acquiring every election.
    rss_acquired_kib: Option<(u64, u64)>,
    /// At rest, [`SCALE_REST`] after acquiring.
    rss_kib: Option<(u64, u64)>,
    /// Terms that ended during the window.
    lost: usize,
}

/// Where the leasehold binaries are.
pub struct Binaries {
    /// `lh-candidate`.
    pub lh_candidate: PathBuf,
    /// The shipped `leasehold`.
    pub leasehold: PathBuf,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Who {
    LhLib,
    /// The library's `ElectionSet`: many elections on one task (scale rows only).
    LhSet,
    LhSidecar,
    Etcdctl,
    Go,
    /// The Go program campaigning in every election at once (scale rows only).
    GoBurst,
}

impl Who {
    const ALL: [Who; 4] = [Who::LhLib, Who::LhSidecar, Who::Go, Who::Etcdctl];

    fn label(self) -> &'static str {
        match self {
            Who::LhLib => "leasehold (library)",
            Who::LhSet => "leasehold ElectionSet (library)",
            Who::LhSidecar => "leasehold run (sidecar)",
            Who::Etcdctl => "etcdctl elect",
            Who::Go => "Go concurrency.Election",
            Who::GoBurst => "Go concurrency.Election, all campaigns at once",
        }
    }

    /// The session TTL: leasehold's lease duration (2 s, renew deadline 1 s, as on Kubernetes
    /// in the main table); the Go program's `-ttl 2`; etcdctl's fixed 60 s.
    fn ttl(self) -> Duration {
        match self {
            Who::Etcdctl => Duration::from_secs(60),
            _ => Duration::from_secs(2),
        }
    }

    fn spawn(self, b: &Binaries, url: &str, name: &str, id: &str) -> std::io::Result<Cand> {
        self.spawn_many(b, url, name, id, 1)
    }

    /// With `m` > 1: the elections `name-0` .. in one process, on one session (the library
    /// and the Go program only), with the scale rows' TTL.
    fn spawn_many(
        self,
        b: &Binaries,
        url: &str,
        name: &str,
        id: &str,
        m: usize,
    ) -> std::io::Result<Cand> {
        let mut c = match self {
            Who::LhLib | Who::LhSet if m > 1 => {
                let mut c = Command::new(&b.lh_candidate);
                let ms = |d: Duration| d.as_millis().to_string();
                let engine = if self == Who::LhSet {
                    "set"
                } else {
                    "electors"
                };
                c.args(["--etcd", url, "--name", name, "--id", id])
                    .args(["--engine", engine])
                    .args(["--lease-duration-ms", &ms(SCALE_TTL)])
                    .args(["--renew-deadline-ms", &ms(SCALE_TTL * 2 / 3)])
                    .args(["--retry-period-ms", &ms(SCALE_TTL * 2 / 15)])
                    .args(["--count", &m.to_string()]);
                c
            }
            Who::Go | Who::GoBurst if m > 1 => {
                let mut c = Command::new(bins().etcd_elector);
                c.args(["-endpoints", url, "-name", name, "-id", id])
                    .args(["-ttl", &SCALE_TTL.as_secs().to_string()])
                    .args(["-count", &m.to_string()])
                    // As many campaigns at a time as leasehold sends requests: all at once,
                    // etcd refuses part of 100,000 and those campaigns give up.
                    .args(["-parallel", if self == Who::Go { "256" } else { "0" }]);
                c
            }
            Who::LhLib | Who::LhSet => {
                let mut c = Command::new(&b.lh_candidate);
                c.args(["--etcd", url, "--name", name, "--id", id])
                    .args(["--lease-duration-ms", "2000", "--renew-deadline-ms", "1000"])
                    .args(["--retry-period-ms", "250"]);
                c
            }
            Who::LhSidecar => {
                let mut c = Command::new(&b.leasehold);
                c.args(["run", "--backend", "etcd", "--endpoints", url])
                    .args(["--name", name, "--id", id])
                    .args(["--lease-duration", "2s", "--renew-deadline", "1s"])
                    .args(["--retry-period", "250ms"])
                    .env("LEASEHOLD_LOG", "warn");
                c
            }
            Who::Etcdctl => {
                let mut c = Command::new(bins().etcdctl);
                c.args(["--endpoints", url, "elect", name, id]);
                c
            }
            Who::Go | Who::GoBurst => {
                let mut c = Command::new(bins().etcd_elector);
                c.args(["-endpoints", url, "-name", name, "-id", id, "-ttl", "2"]);
                c
            }
        };
        c.stdin(Stdio::null());
        let prefix = format!("{name}/");
        let parse = move |line: &str, stderr: bool| -> Option<Ev> {
            if stderr {
                return None;
            }
            match self {
                Who::LhLib | Who::LhSet => parse_prefixed(line, "started ", "stopped "),
                Who::LhSidecar => parse_prefixed(line, "leading: ", "stopped leading"),
                Who::Go | Who::GoBurst => parse_prefixed(line, "elected ", "resigned "),
                // It prints the key it won (`NAME/LEASE`), then its value.
                Who::Etcdctl => None,
            }
        };
        if self == Who::Etcdctl {
            let log = format!("etcd-{name}-{id}");
            return Cand::from_command(c, &log, move |line, stderr| {
                (!stderr && line.starts_with(prefix.as_str())).then_some(Ev::Started)
            });
        }
        Cand::from_command(c, &format!("etcd-{name}-{id}"), parse)
    }
}

fn parse_prefixed(line: &str, started: &str, stopped: &str) -> Option<Ev> {
    if line.starts_with(started) {
        Some(Ev::Started)
    } else if line.starts_with(stopped) {
        Some(Ev::Stopped)
    } else {
        None
    }
}

/// One candidate kind's figures.
struct Row {
    who: Who,
    handover: Vec<Duration>,
    failover: Vec<Duration>,
    msgs_per_min: Option<f64>,
    rss_kib: Option<(u64, u64)>,
}

/// Keys under `name/` on etcd.
async fn queued(client: &etcd_client::Client, name: &str) -> usize {
    let mut c = client.clone();
    c.get(
        format!("{name}/"),
        Some(
            etcd_client::GetOptions::new()
                .with_prefix()
                .with_count_only(),
        ),
    )
    .await
    .map_or(0, |r| usize::try_from(r.count()).unwrap_or(0))
}

/// The sum of etcd's `grpc_server_msg_received_total` from its `/metrics`.
fn messages_received(url: &str) -> Option<f64> {
    let text = leasehold_testing::harness::etcd_metrics(url)?;
    Some(leasehold_testing::harness::metric_sum(
        &text,
        "grpc_server_msg_received_total{",
    ))
}

/// Starts a leader and a standby queued behind it, then signals the leader: the time until
/// the standby says it leads.
async fn one_handover(
    who: Who,
    b: &Binaries,
    url: &str,
    client: &etcd_client::Client,
    sig: rustix::process::Signal,
) -> Option<Duration> {
    let name = unique("bench-etcd");
    let mut leader = who.spawn(b, url, &name, "a").ok()?;
    leader.wait(Ev::Started, Duration::from_secs(20)).await?;
    let mut standby = who.spawn(b, url, &name, "b").ok()?;
    let until = Instant::now() + Duration::from_secs(10);
    while queued(client, &name).await < 2 {
        if Instant::now() > until {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // Its watch on the key before its own is open once it is queued and has listed; a little
    // slack for a process that is still setting up.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let t0 = Instant::now();
    leader.signal(sig);
    let limit = who.ttl() + Duration::from_secs(10);
    let took = standby.wait(Ev::Started, limit).await.map(|t| t - t0);
    let _ = tokio::time::timeout(Duration::from_secs(5), leader.child.wait()).await;
    standby.stop().await;
    took
}

fn stats(v: &[Duration]) -> String {
    if v.is_empty() {
        return "-".into();
    }
    let mut v = v.to_vec();
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    let ms = |d: Duration| {
        let m = d.as_secs_f64() * 1e3;
        if m < 10.0 {
            format!("{m:.1}")
        } else {
            format!("{m:.0}")
        }
    };
    format!(
        "{} / {} / {} / {} (n={})",
        ms(v[0]),
        ms(p(0.5)),
        ms(p(0.9)),
        ms(v[v.len() - 1]),
        v.len()
    )
}

/// The etcd version, from the harness's cache directory (`kube-VERSION-etcd-VERSION`).
fn etcd_version() -> String {
    bins()
        .etcd
        .parent()
        .and_then(|d| d.file_name())
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit("etcd-").next())
        .unwrap_or("(version unknown)")
        .to_owned()
}

fn median(v: &[Duration]) -> Option<Duration> {
    let mut v = v.to_vec();
    v.sort();
    v.get(v.len() / 2).copied()
}

/// Runs every row on one etcd and prints (and writes) the table.
pub async fn run(b: &Binaries, opts: &Opts) {
    let etcd = EtcdServer::start().await;
    let url = etcd.url();
    let client = etcd_client::Client::connect([url.as_str()], None)
        .await
        .expect("etcd client");

    // etcd's own put latency, on this machine, now.
    let mut puts = Vec::new();
    let mut c = client.clone();
    for i in 0..200 {
        let t = Instant::now();
        c.put(format!("bench-put/{}", i % 10), "x", None)
            .await
            .expect("put");
        puts.push(t.elapsed());
    }
    let put = median(&puts).unwrap_or_default();
    eprintln!("etcd put latency: {}", stats(&puts));

    let mut rows = Vec::new();
    for who in Who::ALL {
        eprintln!("leasehold-bench etcd: {}", who.label());
        let mut handover = Vec::new();
        for _ in 0..opts.runs {
            if let Some(d) =
                one_handover(who, b, &url, &client, rustix::process::Signal::TERM).await
            {
                handover.push(d);
            }
        }
        // etcdctl's session TTL is 60 s and cannot be set: its failover is a minute each.
        let mut failover = Vec::new();
        let failovers = if who == Who::Etcdctl { 0 } else { opts.runs };
        for _ in 0..failovers {
            if let Some(d) =
                one_handover(who, b, &url, &client, rustix::process::Signal::KILL).await
            {
                failover.push(d);
            }
        }
        // Steady state with 3 candidates.
        let name = unique("bench-etcd-steady");
        let mut cands = Vec::new();
        for id in ["s0", "s1", "s2"] {
            if let Ok(c) = who.spawn(b, &url, &name, id) {
                cands.push(c);
            }
        }
        // Whichever of the three leads.
        let mut leader_pid = None;
        let until = Instant::now() + Duration::from_secs(20);
        while leader_pid.is_none() && Instant::now() < until {
            for c in &mut cands {
                while let Ok((ev, _)) = c.rx.try_recv() {
                    if ev == Ev::Started {
                        leader_pid = Some(c.pid);
                    }
                }
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let before = messages_received(&url);
        tokio::time::sleep(opts.window).await;
        let after = messages_received(&url);
        let msgs_per_min = match (before, after) {
            (Some(a), Some(b)) => Some((b - a) * 60.0 / opts.window.as_secs_f64()),
            _ => None,
        };
        let rss_kib = leader_pid.and_then(|p| {
            Some((
                crate::cand::status_kib(p, "RssAnon:")?,
                crate::cand::status_kib(p, "RssFile:")?,
            ))
        });
        for c in cands {
            c.stop().await;
        }
        rows.push(Row {
            who,
            handover,
            failover,
            msgs_per_min,
            rss_kib,
        });
    }
    drop(etcd);
    let mut scale_rows = Vec::new();
    for &m in &opts.scale {
        for who in [Who::LhSet, Who::LhLib, Who::Go, Who::GoBurst] {
            eprintln!(
                "leasehold-bench etcd: {} with {m} elections on one session",
                who.label()
            );
            scale_rows.push(scale(who, b, m, opts.scale_window).await);
        }
    }
    let mut table = render(&rows, put, &puts, opts);
    table.push_str(&render_scale(&scale_rows));
    println!("{table}");
    if let Some(out) = &opts.out {
        let _ = std::fs::write(out, &table);
        eprintln!("leasehold-bench etcd: wrote {}", out.display());
    }
}

/// What the table shows, and what it does not yet.
const NOTE: &str = "What the rows show: leasehold hands over fastest (SIGTERM to the leader, which resigns, to the standby's watch event), and fails over when etcd expires the dead leader's lease, like Go's election. It sends about twice the messages of Go's session with the same TTL: a leasehold leader keeps its lease alive every half renew deadline (0.5 s here) because it stops acting at the renew deadline after its last answered keepalive, where Go's session sends every third of the TTL and its leader never stops on its own. A single election holds a session of its own; the scale rows below put many elections on one shared session (`EtcdSession`), as Go's program does with `-count`.";

fn render(rows: &[Row], put: Duration, puts: &[Duration], opts: &Opts) -> String {
    let mut t = String::new();
    let _ = writeln!(
        t,
        "# Benchmark: leasehold on etcd, beside etcd's own election clients\n"
    );
    let _ = writeln!(
        t,
        "`cargo run --release -p leasehold-bench -- etcd` on one etcd {} (built from its Go module by the harness), on the 2-core test machine. Times in ms: min / median / p90 / max. Handover: SIGTERM to the leader until the standby queued behind it says it leads (a fresh pair of processes each run). Failover: SIGKILL instead. Messages: etcd's `grpc_server_msg_received_total` (every unary request and every stream message: keepalives, watch requests) per minute, with 3 candidates, over {} s of steady state. RSS of the leader, anonymous + file-backed.\n",
        etcd_version(),
        opts.window.as_secs()
    );
    let _ = writeln!(t, "etcd's own put latency in this run: {}\n", stats(puts));
    let _ = writeln!(
        t,
        "| candidate | session TTL | graceful handover | crash failover | failover / TTL | etcd messages/min, 3 candidates | RSS (anon + file) |"
    );
    let _ = writeln!(t, "|---|---|---|---|---|---|---|");
    for r in rows {
        let ratio = median(&r.failover).map_or("-".into(), |m| {
            format!("{:.2}", m.as_secs_f64() / r.who.ttl().as_secs_f64())
        });
        let failover = if r.who == Who::Etcdctl {
            "- (TTL fixed at 60 s)".into()
        } else {
            stats(&r.failover)
        };
        let _ = writeln!(
            t,
            "| {} | {} s | {} | {} | {} | {} | {} |",
            r.who.label(),
            r.who.ttl().as_secs(),
            stats(&r.handover),
            failover,
            ratio,
            r.msgs_per_min.map_or("-".into(), |m| format!("{m:.0}")),
            r.rss_kib.map_or("-".into(), |(a, f)| format!(
                "{:.1} MiB ({:.1} + {:.1})",
                (a + f) as f64 / 1024.0,
                a as f64 / 1024.0,
                f as f64 / 1024.0
            )),
        );
    }
    let _ = writeln!(t, "\n{NOTE}");
    let _ = writeln!(t, "\n## Targets\n");
    let _ = writeln!(t, "| target | measured | verdict |\n|---|---|---|");
    for who in [Who::LhLib, Who::LhSidecar] {
        let Some(r) = rows.iter().find(|r| r.who == who) else {
            continue;
        };
        let m = median(&r.handover);
        let pass = m.is_some_and(|m| m <= put * 3);
        let _ = writeln!(
            t,
            "| {} handover median ≤ 3 × etcd's put latency | {} vs 3 × {:.2} ms = {:.2} ms | {} |",
            who.label(),
            m.map_or("-".into(), |m| format!("{:.2} ms", m.as_secs_f64() * 1e3)),
            put.as_secs_f64() * 1e3,
            put.as_secs_f64() * 3e3,
            if pass { "PASS" } else { "MISS" }
        );
    }
    t
}

/// One process of `who` holding `m` elections on one session, on a fresh etcd: the time until
/// it leads all, then over `window` of steady state its CPU, etcd's CPU, the messages etcd
/// receives, and its RSS.
async fn scale(who: Who, b: &Binaries, m: usize, window: Duration) -> ScaleRow {
    let etcd = EtcdServer::start().await;
    let url = etcd.url();
    let mut row = ScaleRow {
        who,
        m,
        acquired: 0,
        acquire: Duration::ZERO,
        cpu_secs: 0.0,
        etcd_cpu_secs: 0.0,
        window,
        msgs_per_sec: None,
        rss_acquired_kib: None,
        rss_kib: None,
        lost: 0,
    };
    let t0 = Instant::now();
    let Ok(mut c) = who.spawn_many(b, &url, &unique("scale"), "sc", m) else {
        return row;
    };
    // etcd may refuse a burst ("too many requests"); the Go program's campaigns give up on
    // it after their retries, so not every row reaches `m`.
    let limit = t0 + SCALE_ACQUIRE;
    while row.acquired < m {
        match tokio::time::timeout_at(limit, c.rx.recv()).await {
            Ok(Some((Ev::Started, _))) => row.acquired += 1,
            Ok(Some(_)) => {}
            _ => break,
        }
    }
    row.acquire = t0.elapsed();
    let acquired_at = Instant::now();
    let rss = |pid| {
        Some((
            crate::cand::status_kib(pid, "RssAnon:")?,
            crate::cand::status_kib(pid, "RssFile:")?,
        ))
    };
    row.rss_acquired_kib = rss(c.pid);
    // A full keepalive cycle and more before measuring: the acquisition is not steady state.
    tokio::time::sleep(SCALE_TTL / 3 + Duration::from_secs(5)).await;
    while c.rx.try_recv().is_ok() {}
    let etcd_pid = etcd.pid().unwrap_or(0);
    let cpu = |pid| crate::cand::cpu_secs(pid).unwrap_or(0.0);
    let (cpu0, etcd0, msgs0) = (cpu(c.pid), cpu(etcd_pid), messages_received(&url));
    let until = Instant::now() + window;
    while let Ok(Some((ev, _))) = tokio::time::timeout_at(until, c.rx.recv()).await {
        if ev == Ev::Stopped {
            row.lost += 1;
        }
    }
    row.cpu_secs = cpu(c.pid) - cpu0;
    row.etcd_cpu_secs = cpu(etcd_pid) - etcd0;
    row.msgs_per_sec = match (msgs0, messages_received(&url)) {
        (Some(a), Some(b)) => Some((b - a) / window.as_secs_f64()),
        _ => None,
    };
    // At rest: Go's runtime collects an idle heap only at its forced collection (every two
    // minutes) and returns it to the system after; measured before that, its RSS is the
    // acquisition's garbage.
    tokio::time::sleep_until(acquired_at + SCALE_REST).await;
    row.rss_kib = rss(c.pid);
    c.stop().await;
    row
}

fn render_scale(rows: &[ScaleRow]) -> String {
    let mut t = String::new();
    if rows.is_empty() {
        return t;
    }
    let _ = writeln!(
        t,
        "\n## Scale: one process, M elections on one session\n\nEach row on a fresh etcd: one process campaigns in `scale-0` .. `scale-(M-1)`, alone in each, on one session (one lease, TTL {} s for both; keepalives every 10 s). Time to acquire all: from the process's start until it has said it leads every election (or gave up, after {} s). Then, after one keepalive cycle, over {} s of steady state: the process's CPU (per election led and minute), etcd's CPU, the messages etcd receives per second (`grpc_server_msg_received_total`), and terms lost. RSS right after acquiring, and at rest {} s after (Go's runtime returns an idle heap to the system only after its forced collection, every two minutes). leasehold runs as one `ElectionSet` (one task drives every election) and as an `Elector` each; the Go program with `-parallel 256` (at most 256 campaigns at a time, as the set sends at most 256 requests at a time) and with every campaign at once (a goroutine each; etcd refuses part of such a burst with `too many requests`, and those campaigns give up).\n",
        SCALE_TTL.as_secs(),
        SCALE_ACQUIRE.as_secs(),
        rows[0].window.as_secs(),
        SCALE_REST.as_secs()
    );
    let _ = writeln!(
        t,
        "| candidate | elections | led | time to acquire all | CPU per election-minute | process CPU in window | etcd CPU in window | etcd messages/s | RSS after acquiring | RSS at rest (anon + file) | per election at rest | terms lost |\n|---|---|---|---|---|---|---|---|---|---|---|---|"
    );
    for r in rows {
        let minutes = r.window.as_secs_f64() / 60.0;
        let _ = writeln!(
            t,
            "| {} | {} | {} | {:.1} s | {:.2} µs | {:.2} s | {:.2} s | {} | {} | {} | {} | {} |",
            r.who.label(),
            r.m,
            r.acquired,
            r.acquire.as_secs_f64(),
            // Per election led: a process that gave up on some holds fewer.
            r.cpu_secs * 1e6 / (r.acquired.max(1) as f64 * minutes),
            r.cpu_secs,
            r.etcd_cpu_secs,
            r.msgs_per_sec.map_or("-".into(), |m| format!("{m:.2}")),
            r.rss_acquired_kib.map_or("-".into(), |(a, f)| format!(
                "{:.1} MiB",
                (a + f) as f64 / 1024.0
            )),
            r.rss_kib.map_or("-".into(), |(a, f)| format!(
                "{:.1} MiB ({:.1} + {:.1})",
                (a + f) as f64 / 1024.0,
                a as f64 / 1024.0,
                f as f64 / 1024.0
            )),
            r.rss_kib.map_or("-".into(), |(a, f)| format!(
                "{:.1} KiB",
                (a + f) as f64 / r.acquired.max(1) as f64
            )),
            r.lost,
        );
    }
    let find = |who, m| rows.iter().find(|r| r.who == who && r.m == m);
    let max = rows.iter().map(|r| r.m).max().unwrap_or(0);
    let min = rows.iter().map(|r| r.m).min().unwrap_or(0);
    let _ = writeln!(t, "\n| scale target | measured | verdict |\n|---|---|---|");
    // The set where it ran: leasehold's way to hold many elections.
    let lh = |m| find(Who::LhSet, m).or_else(|| find(Who::LhLib, m));
    if let (Some(big), Some(small)) = (lh(max), lh(min))
        && max > min
        && let (Some(a), Some(b)) = (big.msgs_per_sec, small.msgs_per_sec)
    {
        // Independent: ten times the elections, not more than half again the messages (one
        // message of slack for the window's edges).
        let slack = 1.0 / big.window.as_secs_f64();
        let _ = writeln!(
            t,
            "| {} steady-state messages/s independent of the number of elections | {a:.2}/s at {max} vs {b:.2}/s at {min} | {} |",
            big.who.label(),
            if a <= b * 1.5 + slack { "PASS" } else { "MISS" }
        );
    }
    // Against each way of running the Go program: 256 campaigns at a time (its best), and all
    // at once.
    for go in [Who::Go, Who::GoBurst] {
        if let (Some(lh), Some(go)) = (lh(max), find(go, max))
            && let (Some((la, lf)), Some((ga, gf))) = (lh.rss_kib, go.rss_kib)
        {
            // Per election led: a process that gave up on some elections holds less.
            let (l, g) = ((la + lf) as f64 / 1024.0, (ga + gf) as f64 / 1024.0);
            let per = |mib: f64, r: &ScaleRow| mib * 1024.0 / r.acquired.max(1) as f64;
            let (lp, gp) = (per(l, lh), per(g, go));
            let _ = writeln!(
                t,
                "| {} RSS at rest at {max} elections ≤ 1/3 of the Go program's (per election led), {} | {l:.1} MiB for {} vs {g:.1} MiB for {}: {lp:.1} vs {gp:.1} KiB, {:.2}× | {} |",
                lh.who.label(),
                if go.who == Who::Go {
                    "256 campaigns at a time"
                } else {
                    "all campaigns at once"
                },
                lh.acquired,
                go.acquired,
                lp / gp,
                if lp * 3.0 <= gp { "PASS" } else { "MISS" }
            );
        }
    }
    t
}
