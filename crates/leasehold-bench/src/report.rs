//! The results: one table (printed and written to docs/benchmarks.md), targets as PASS/MISS,
//! and an SVG of the handover and failover distributions.

use crate::{
    ServerFloor,
    cand::{Durations, Impl},
};
use std::{collections::BTreeMap, fmt::Write as _, path::PathBuf, time::Duration};

/// The heading under which docs/benchmarks.md explains a run by hand; a new run keeps it.
pub const READING: &str = "## Reading the results";

pub struct Row {
    pub imp: Impl,
    pub d: Durations,
    pub binary: PathBuf,
    pub handover: Vec<Duration>,
    pub failover: Vec<Duration>,
    pub load1: Option<BTreeMap<String, f64>>,
    pub load3: Option<BTreeMap<String, f64>>,
    pub rss_kib: Option<u64>,
    /// Anonymous (heap, stacks) and file-backed (the binary's pages) parts of the RSS.
    pub rss_anon_file_kib: Option<(u64, u64)>,
    pub cpu_per_min: Option<f64>,
}

#[derive(Default)]
pub struct Scale {
    pub imp: Option<Impl>,
    pub m: usize,
    pub acquired: usize,
    pub acquire_secs: f64,
    pub window_secs: f64,
    pub cpu_secs: f64,
    pub api_cpu_secs: f64,
    pub etcd_cpu_secs: f64,
    pub rss_kib: Option<u64>,
    pub req_per_sec: f64,
    pub missed: usize,
}

pub struct Report {
    pub runs: usize,
    pub fast: Durations,
    pub scale_d: Durations,
    /// The server's own cost, measured before the candidates' handovers and after them.
    pub floors: Vec<ServerFloor>,
    pub rows: Vec<Row>,
    pub scale: Vec<Scale>,
}

fn stats(v: &[Duration]) -> Option<[Duration; 4]> {
    if v.is_empty() {
        return None;
    }
    let mut v = v.to_vec();
    v.sort();
    let p = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
    Some([v[0], p(0.5), p(0.9), v[v.len() - 1]])
}

/// The median of `v` as the tables print it (zero for no samples).
pub fn median(v: &[Duration]) -> Duration {
    stats(v).map_or(Duration::ZERO, |s| s[1])
}

fn ms(d: Duration) -> String {
    let ms = d.as_secs_f64() * 1e3;
    if ms < 10.0 {
        format!("{ms:.1}")
    } else {
        format!("{ms:.0}")
    }
}

fn verdict(ok: bool) -> &'static str {
    if ok { "PASS" } else { "MISS" }
}

impl Row {
    pub fn new(imp: Impl, d: Durations, binary: PathBuf) -> Self {
        Self {
            imp,
            d,
            binary,
            handover: Vec::new(),
            failover: Vec::new(),
            load1: None,
            load3: None,
            rss_kib: None,
            rss_anon_file_kib: None,
            cpu_per_min: None,
        }
    }

    fn total(l: &Option<BTreeMap<String, f64>>) -> Option<f64> {
        l.as_ref().map(|m| m.values().sum())
    }

    fn verbs(l: &Option<BTreeMap<String, f64>>) -> String {
        match l {
            None => "-".into(),
            Some(m) => m
                .iter()
                .filter(|(_, v)| **v >= 0.5)
                .map(|(k, v)| format!("{k} {v:.0}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

impl Report {
    pub fn new(runs: &usize, fast: Durations, scale_d: Durations) -> Self {
        Self {
            runs: *runs,
            fast,
            scale_d,
            floors: Vec::new(),
            rows: Vec::new(),
            scale: Vec::new(),
        }
    }

    /// One figure of every [`ServerFloor`], in the order measured: `2.4 / 2.2`.
    fn floor_ms(&self, f: impl Fn(&ServerFloor) -> Duration) -> String {
        let v: Vec<String> = self.floors.iter().map(|x| ms(f(x))).collect();
        if v.is_empty() {
            "-".into()
        } else {
            v.join(" / ")
        }
    }

    fn row(&self, imp: Impl) -> Option<&Row> {
        self.rows.iter().find(|r| r.imp == imp)
    }

    pub fn table(&self) -> String {
        let mut t = String::new();
        let d = self.fast;
        let _ = writeln!(
            t,
            "Lease {} s, renew deadline {} s, retry period {} ms for every candidate that can express them (the table says where one cannot; the client-go example has its compiled-in 60 s / 15 s / 5 s). Times in ms: min / median / p90 / max. RSS after the footprint window, anonymous + file-backed MiB.",
            d.lease.as_secs(),
            d.renew.as_secs(),
            d.retry.as_millis()
        );
        let _ = writeln!(
            t,
            "HTTP path: both leasehold rows, the server floor and the scale runs use leasehold's opt-in lean client (feature `lean-client`: its own HTTP/2 connection, Lease codec and kubeconfig reader), as the shipped sidecar does; a library built with default features sends every request through the application's own `kube::Client` instead (docs/design.md). The Go candidates use client-go, the Rust crates their own kube clients.\n"
        );
        let _ = writeln!(
            t,
            "The API server's own cost, through leasehold's lock API with no elector, every PUT a real write (it changes `renewTime`), measured before the handovers and again after them: Lease PUT median {} ms back to back (n = 50); {} ms isolated (n = 20, each after the server sat idle for {} ms, as a handover's release finds it); a bare handover (release PUT, the standby's watch event, acquiring PUT, on two connections, n = 20, each after {} ms idle) {} ms.\n",
            self.floor_ms(|f| f.put),
            self.floor_ms(|f| f.put_isolated),
            crate::IDLE.as_millis(),
            crate::IDLE.as_millis(),
            self.floor_ms(|f| f.handover),
        );
        let _ = writeln!(
            t,
            "| candidate | lease / renew / retry | graceful handover (n) | crash failover (n) | failover / lease | API req/min, 1 candidate | API req/min, 3 candidates | RSS (anon + file) | CPU s/min | binary |"
        );
        let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|---|");
        for r in &self.rows {
            let s4 = |v: &[Duration]| match stats(v) {
                Some([a, b, c, e]) => format!(
                    "{} / **{}** / {} / {} ({})",
                    ms(a),
                    ms(b),
                    ms(c),
                    ms(e),
                    v.len()
                ),
                None => "-".into(),
            };
            let ratio = stats(&r.failover).map_or("-".into(), |s| {
                format!("{:.3}", s[1].as_secs_f64() / r.d.lease.as_secs_f64())
            });
            let size = std::fs::metadata(&r.binary)
                .map_or("-".into(), |m| format!("{:.1} MB", m.len() as f64 / 1e6));
            let _ = writeln!(
                t,
                "| {} | {} s / {} s / {} ms | {} | {} | {} | {:.0} ({}) | {:.0} ({}) | {} | {} | {} |",
                r.imp.label(),
                r.d.lease.as_secs_f64(),
                r.d.renew.as_secs_f64(),
                r.d.retry.as_millis(),
                s4(&r.handover),
                s4(&r.failover),
                ratio,
                Row::total(&r.load1).unwrap_or(f64::NAN),
                Row::verbs(&r.load1),
                Row::total(&r.load3).unwrap_or(f64::NAN),
                Row::verbs(&r.load3),
                r.rss_kib.map_or("-".into(), |k| match r.rss_anon_file_kib {
                    Some((a, f)) => format!(
                        "{:.1} MiB ({:.1} + {:.1})",
                        k as f64 / 1024.0,
                        a as f64 / 1024.0,
                        f as f64 / 1024.0
                    ),
                    None => format!("{:.1} MiB", k as f64 / 1024.0),
                }),
                r.cpu_per_min.map_or("-".into(), |c| format!("{c:.2}")),
                size,
            );
        }
        if !self.scale.is_empty() {
            let sd = self.scale_d;
            let _ = writeln!(
                t,
                "\nScale: one process, M elections on M Leases, lease {} s / renew {} s / retry {} s; measured over one window after a full renewal cycle.\n",
                sd.lease.as_secs(),
                sd.renew.as_secs(),
                sd.retry.as_secs()
            );
            let _ = writeln!(
                t,
                "| candidate | M | acquired (s) | CPU s per election-minute | RSS | API req/s | missed renew deadlines | kube-apiserver CPU s/min | etcd CPU s/min |"
            );
            let _ = writeln!(t, "|---|---|---|---|---|---|---|---|---|");
            for s in &self.scale {
                let min = s.window_secs / 60.0;
                let _ = writeln!(
                    t,
                    "| {} | {} | {} ({:.1}) | {:.6} | {} | {:.1} | {} | {:.2} | {:.2} |",
                    s.imp.map_or("-", Impl::label),
                    s.m,
                    s.acquired,
                    s.acquire_secs,
                    s.cpu_secs / min / s.m.max(1) as f64,
                    s.rss_kib
                        .map_or("-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0)),
                    s.req_per_sec,
                    s.missed,
                    s.api_cpu_secs / min,
                    s.etcd_cpu_secs / min,
                );
            }
        }
        let _ = writeln!(t, "\n{}", self.targets());
        t
    }

    fn targets(&self) -> String {
        let mut t = String::from("| target | measured | result |\n|---|---|---|\n");
        let lh = self.row(Impl::LhLib);
        let go = self.row(Impl::GoElector);
        let med = |v: &[Duration]| stats(v).map(|s| s[1]);
        if let (Some(lh), Some(go)) = (lh, go) {
            if let (Some(a), Some(b)) = (med(&lh.handover), med(&go.handover)) {
                let ok = a.as_secs_f64() <= b.as_secs_f64() / 20.0;
                let _ = writeln!(
                    t,
                    "| handover median ≤ 1/20 of client-go's | {} ms vs {} ms: 1/{:.0} | {} |",
                    ms(a),
                    ms(b),
                    b.as_secs_f64() / a.as_secs_f64(),
                    verdict(ok)
                );
                if let Some(f) = self.floors.iter().min_by_key(|f| f.put) {
                    let ok = a <= f.put * 5;
                    let _ = writeln!(
                        t,
                        "| handover median ≤ 5 × Lease PUT latency | {} ms vs 5 × {} ms (the faster of {} measurements): {:.1} × (isolated PUT {} ms; bare handover {} ms) | {} |",
                        ms(a),
                        ms(f.put),
                        self.floors.len(),
                        a.as_secs_f64() / f.put.as_secs_f64().max(1e-9),
                        ms(f.put_isolated),
                        ms(f.handover),
                        verdict(ok)
                    );
                }
            }
            if let Some(f) = med(&lh.failover) {
                let ok = f <= lh.d.lease + Duration::from_millis(100);
                let _ = writeln!(
                    t,
                    "| crash failover median ≤ lease + 100 ms | {} ms (lease {} ms) | {} |",
                    ms(f),
                    lh.d.lease.as_millis(),
                    verdict(ok)
                );
            }
            if let (Some(a), Some(b)) = (Row::total(&lh.load3), Row::total(&go.load3)) {
                let ok = a <= b / 4.0;
                let _ = writeln!(
                    t,
                    "| steady-state requests with 3 candidates ≤ 1/4 of client-go's | {a:.0} vs {b:.0} per min: 1/{:.1} | {} |",
                    b / a.max(1e-9),
                    verdict(ok)
                );
            }
        }
        if let (Some(sc), Some(ex)) = (
            self.row(Impl::LhSidecar).and_then(|r| r.rss_kib),
            self.row(Impl::GoExample).and_then(|r| r.rss_kib),
        ) {
            let ok = sc * 5 <= ex;
            let _ = writeln!(
                t,
                "| sidecar RSS ≤ 1/5 of the client-go example's | {:.1} MiB vs {:.1} MiB: 1/{:.1} | {} |",
                sc as f64 / 1024.0,
                ex as f64 / 1024.0,
                ex as f64 / sc.max(1) as f64,
                verdict(ok)
            );
        }
        let big = |imp| {
            self.scale
                .iter()
                .filter(|s| s.imp == Some(imp))
                .max_by_key(|s| s.m)
        };
        if let (Some(l), Some(g)) = (big(Impl::LhLib), big(Impl::GoElector)) {
            let per = |s: &Scale| s.cpu_secs / s.m.max(1) as f64;
            let ok = l.missed == 0 && l.acquired == l.m && per(l) <= per(g) / 5.0;
            let _ = writeln!(
                t,
                "| {} elections: no missed deadline, CPU per election ≤ 1/5 of client-go's | missed {}, CPU ratio 1/{:.1} | {} |",
                l.m,
                l.missed,
                per(g) / per(l).max(1e-12),
                verdict(ok)
            );
        }
        t
    }

    pub fn markdown(&self, table: &str, svg: &str) -> String {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| {
                s.lines()
                    .find_map(|l| l.strip_prefix("model name"))
                    .map(|v| v.trim_start_matches([' ', '\t', ':']).to_owned())
            })
            .unwrap_or_default();
        let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
        let mem = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|s| {
                s.lines().next().map(|l| {
                    l.split_whitespace()
                        .nth(1)
                        .unwrap_or("0")
                        .parse::<u64>()
                        .unwrap_or(0)
                })
            })
            .unwrap_or(0);
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        format!(
            "# Benchmarks\n\nGenerated by `cargo run --release -p leasehold-bench -- all` on {date}.\n\n- Machine: {cpu}, {cores} cores, {mem:.1} GiB RAM, Linux {kernel}\n- Kubernetes: kube-apiserver v1.36.3 and etcd v3.6.8, built from their Go modules, on 127.0.0.1 (one server for every candidate, started by the test harness)\n- client-go v0.36.3: its `examples/leader-election` as shipped, and `go-elector` (the same `tools/leaderelection` with durations as flags)\n- Runs per handover/failover measurement: {runs} (5 for the shipped example, whose durations are compiled in; no failover for it: its lease is 60 s)\n- Every candidate releases on cancel where it can; handover = SIGTERM to the leader → the other candidate reports that it leads; failover = SIGKILL.\n- API load: `apiserver_request_total{{resource=\"leases\"}}` before and after a window, minus a window with no candidate (the API server's own lease), per minute.\n- Footprint: every candidate leading its own Lease at once; RSS from /proc after the window, CPU = utime + stime over it.\n- Builds: leasehold's library candidates with the `release` profile (what a Rust user's `--release` gives: opt-level 3, thin LTO); the `leasehold run` sidecar as it ships, from `scripts/build-dist.sh`: the `dist` profile (opt-level \"z\", fat LTO: size over speed, since its size is most of its resident memory), statically linked (no libc.so or ld.so mapped, as Go's binaries). Go binaries with `go build -trimpath -ldflags=-s` (symbols stripped, as leasehold's are).\n\n![handover and failover distributions]({svg})\n\n{table}\n",
            date = jiff::Timestamp::now().strftime("%Y-%m-%d %H:%M UTC"),
            mem = mem as f64 / 1024.0 / 1024.0,
            kernel = kernel.trim(),
            runs = self.runs,
        )
    }

    /// A strip plot per candidate: handover (blue) and failover (orange) samples on a log axis
    /// from 1 ms to 100 s, with the median marked.
    pub fn svg(&self) -> String {
        let (w, left, row_h, top) = (900.0, 250.0, 34.0, 30.0);
        let h = top + row_h * self.rows.len() as f64 + 40.0;
        let x = |d: Duration| {
            let ms = (d.as_secs_f64() * 1e3).clamp(1.0, 100_000.0);
            left + (ms.log10() / 5.0) * (w - left - 20.0)
        };
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{w}\" height=\"{h}\" font-family=\"sans-serif\" font-size=\"12\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n"
        );
        let _ = writeln!(
            s,
            "<text x=\"{left}\" y=\"18\">handover (blue) and crash failover (orange), ms, log scale; bar = median</text>"
        );
        for (k, label) in ["1", "10", "100", "1 s", "10 s", "100 s"]
            .iter()
            .enumerate()
        {
            let xx = left + (k as f64 / 5.0) * (w - left - 20.0);
            let _ = writeln!(
                s,
                "<line x1=\"{xx}\" y1=\"{top}\" x2=\"{xx}\" y2=\"{}\" stroke=\"#ddd\"/><text x=\"{xx}\" y=\"{}\" text-anchor=\"middle\">{label}</text>",
                h - 30.0,
                h - 14.0
            );
        }
        for (i, r) in self.rows.iter().enumerate() {
            let y = top + row_h * i as f64 + row_h / 2.0;
            let _ = writeln!(
                s,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"end\">{}</text>",
                left - 8.0,
                y + 4.0,
                r.imp.label()
            );
            for (v, color, dy) in [
                (&r.handover, "#1f77b4", -6.0),
                (&r.failover, "#ff7f0e", 6.0),
            ] {
                for d in v.iter() {
                    let _ = writeln!(
                        s,
                        "<circle cx=\"{:.1}\" cy=\"{}\" r=\"3\" fill=\"{color}\" fill-opacity=\"0.5\"/>",
                        x(*d),
                        y + dy
                    );
                }
                if let Some(st) = stats(v) {
                    let xm = x(st[1]);
                    let _ = writeln!(
                        s,
                        "<line x1=\"{xm:.1}\" y1=\"{}\" x2=\"{xm:.1}\" y2=\"{}\" stroke=\"{color}\" stroke-width=\"2\"/>",
                        y + dy - 6.0,
                        y + dy + 6.0
                    );
                }
            }
        }
        s.push_str("</svg>\n");
        s
    }
}
