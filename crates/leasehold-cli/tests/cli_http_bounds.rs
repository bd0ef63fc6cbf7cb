//! The sidecar's HTTP server (`--http`) under thousands of idle and slowly written connections,
//! all on 127.0.0.1: new clients are still answered at once, renewals stay on schedule, and the
//! server holds a bounded number of connections (so it cannot run the process out of file
//! descriptors, which the lock's own requests need too).

use std::{
    io::{ErrorKind, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// Connections that connect and send nothing.
const IDLE: usize = 4_000;
/// Connections that send a request head one byte at a time and never finish it.
const SLOW: usize = 1_000;
/// The open-file limit the sidecar runs under: the soft limit most Linux services start with
/// (systemd's default, and many container runtimes').
const SIDECAR_NOFILE: u64 = 1_024;
/// At most this many open file descriptors in the sidecar while the connections are open.
const SIDECAR_FDS: usize = 256;

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap()
}

/// Raises this process's soft RLIMIT_NOFILE to at least `n` (up to the hard limit).
fn raise_nofile(n: u64) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut l = getrlimit(Resource::Nofile);
    if l.current.is_some_and(|c| c < n) {
        l.current = Some(l.maximum.map_or(n, |m| m.min(n)));
        setrlimit(Resource::Nofile, l).unwrap();
    }
}

/// `GET path` as a new client, all within `limit`: (status code, time taken).
fn get(addr: SocketAddr, path: &str, limit: Duration) -> Result<(u16, Duration), String> {
    let t0 = Instant::now();
    let mut s = TcpStream::connect_timeout(&addr, limit).map_err(|e| format!("connect: {e}"))?;
    let left = |t0: Instant| {
        limit
            .checked_sub(t0.elapsed())
            .filter(|d| !d.is_zero())
            .ok_or_else(|| format!("no answer within {limit:?}"))
    };
    s.set_write_timeout(Some(left(t0)?)).unwrap();
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").map_err(|e| format!("write: {e}"))?;
    let mut resp = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        s.set_read_timeout(Some(left(t0)?)).unwrap();
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => resp.extend_from_slice(&buf[..n]),
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                return Err(format!("no answer within {limit:?}"));
            }
            Err(e) => return Err(format!("read: {e}")),
        }
    }
    let resp = String::from_utf8_lossy(&resp);
    let code = resp
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| format!("not an HTTP response: {resp:?}"))?;
    Ok((code, t0.elapsed()))
}

/// The record file's `renewTime`, if it can be read.
fn renew_time(file: &Path) -> Option<String> {
    let bytes = std::fs::read(file).ok()?;
    let v: serde_json::Value = serde_json::from_slice(&bytes).ok()?;
    if v["holderIdentity"] != "a" {
        return None;
    }
    v["renewTime"].as_str().map(str::to_owned)
}

fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count())
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

#[test]
fn thousands_of_idle_or_slow_connections_starve_neither_new_clients_nor_renewals() {
    raise_nofile(16_384);
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("lock.json");
    let port = free_port();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let log = std::fs::File::create(dir.path().join("leasehold.log")).unwrap();
    let mut child = Proc(
        Command::new(BIN)
            .args(["run", "--backend", "file", "--name", "t", "--id", "a"])
            .arg("--file")
            .arg(&file)
            .args([
                "--lease-duration",
                "2s",
                "--renew-deadline",
                "1s",
                "--retry-period",
                "200ms",
            ])
            .args(["--http", &addr.to_string()])
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let pid = child.0.id();
    let rpid = rustix::process::Pid::from_raw(pid as i32).unwrap();
    // Where a sidecar usually runs: a server that holds every connection it is offered takes
    // all the descriptors, and then the lock's own file opens fail (EMFILE) and the term ends.
    rustix::process::prlimit(
        Some(rpid),
        rustix::process::Resource::Nofile,
        rustix::process::Rlimit {
            current: Some(SIDECAR_NOFILE),
            maximum: rustix::process::getrlimit(rustix::process::Resource::Nofile).maximum,
        },
    )
    .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            renew_time(&file).is_some()
                && get(addr, "/healthz", Duration::from_secs(1)).is_ok_and(|r| r.0 == 200)
        }),
        "the sidecar leads and serves /healthz"
    );

    // The flood: idle connections, then slow ones that send a request head byte by byte. As
    // fast as this thread can connect, which can outrun the listen queue (128, the standard
    // library's backlog) while the sidecar's one thread is busy: a connect that times out
    // is retried, as a client's kernel would retransmit its SYN.
    let t_open = Instant::now();
    let mut idle = Vec::with_capacity(IDLE);
    let mut slow = Vec::with_capacity(SLOW);
    let (mut failed, mut retried) = (0, 0);
    let mut first_error = None;
    for i in 0..IDLE + SLOW {
        let mut conn = None;
        while conn.is_none() && t_open.elapsed() < Duration::from_secs(30) {
            match TcpStream::connect_timeout(&addr, Duration::from_millis(500)) {
                Ok(s) => conn = Some(s),
                Err(e) => {
                    retried += 1;
                    first_error.get_or_insert_with(|| format!("connection {i}: {e}"));
                }
            }
        }
        match conn {
            Some(s) if i < IDLE => idle.push(s),
            Some(mut s) => {
                let _ = s.write_all(b"GET /healthz HTTP/1.1\r\nX-Slow: ");
                s.set_nonblocking(true).unwrap();
                slow.push(s);
            }
            None => failed += 1,
        }
    }
    let opened = idle.len() + slow.len();
    println!(
        "opened {opened} connections ({} idle, {} slow; {failed} not accepted within 30 s; {retried} connects timed out and were retried, first {first_error:?}) in {:?}",
        idle.len(),
        slow.len(),
        t_open.elapsed()
    );

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = Arc::clone(&stop);
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                for s in &mut slow {
                    let _ = s.write(b"a");
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            slow
        })
    };
    // More keep coming while the checks run, one every 5 ms: a flood, not a snapshot of one.
    let more = Arc::new(AtomicUsize::new(0));
    let churn = {
        let (stop, more) = (Arc::clone(&stop), Arc::clone(&more));
        std::thread::spawn(move || {
            let mut held = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                if let Ok(s) = TcpStream::connect_timeout(&addr, Duration::from_millis(100)) {
                    held.push(s);
                    more.fetch_add(1, Ordering::Relaxed);
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            held
        })
    };

    // For 3 s: a new client asks /healthz every 100 ms, the record is sampled every 20 ms.
    let window = Instant::now();
    let mut probes = Vec::new();
    let mut renewals: Vec<String> = renew_time(&file).into_iter().collect();
    let mut max_fds = 0;
    let mut next_probe = window;
    while window.elapsed() < Duration::from_secs(3) {
        if Instant::now() >= next_probe {
            probes.push(get(addr, "/healthz", Duration::from_secs(1)));
            next_probe += Duration::from_millis(100);
        }
        if let Some(t) = renew_time(&file)
            && renewals.last() != Some(&t)
        {
            renewals.push(t);
        }
        max_fds = max_fds.max(open_fds(pid));
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    let slow = writer.join().unwrap();
    let churned = churn.join().unwrap();

    let times: Vec<jiff::Timestamp> = renewals.iter().map(|t| t.parse().unwrap()).collect();
    let largest_gap = times
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    let advances = renewals.len().saturating_sub(1);
    let slowest = probes
        .iter()
        .filter_map(|p| p.as_ref().ok().map(|r| r.1))
        .max()
        .unwrap_or_default();
    let failures: Vec<&String> = probes.iter().filter_map(|p| p.as_ref().err()).collect();
    println!(
        "while {opened} connections were open (+{} more during the checks): {} /healthz probes, {} failed {:?}, slowest answer {slowest:?}; renewTime advanced {advances} times in 3 s, largest gap {largest_gap:#}; the sidecar held at most {max_fds} file descriptors",
        more.load(Ordering::Relaxed),
        probes.len(),
        failures.len(),
        failures.first(),
    );
    // Close every connection before asserting, then stop the sidecar.
    drop((idle, slow, churned));
    // The sidecar's last log lines, for a failure's message.
    let log = || {
        let log = std::fs::read_to_string(dir.path().join("leasehold.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(8)..].join("\n")
    };
    let still = get(addr, "/healthz", Duration::from_secs(1));
    let _ = rustix::process::kill_process(rpid, rustix::process::Signal::TERM);
    let _ = child.0.wait();

    assert!(
        failures.is_empty() && probes.iter().all(|p| p.as_ref().is_ok_and(|r| r.0 == 200)),
        "every new client got 200 from /healthz within 1 s: {probes:?}\n{}",
        log()
    );
    assert!(
        advances >= 4,
        "renewals every 500 ms: renewTime advanced only {advances} times in 3 s ({renewals:?})\n{}",
        log()
    );
    assert!(
        largest_gap < jiff::SignedDuration::from_secs(1),
        "no gap between renewals reaches the 1 s renew deadline: {largest_gap:#} ({renewals:?})"
    );
    assert!(
        max_fds <= SIDECAR_FDS,
        "the server holds a bounded number of connections: {max_fds} file descriptors open"
    );
    assert!(
        still.is_ok_and(|r| r.0 == 200),
        "served once the connections are closed"
    );
    assert_eq!(opened, IDLE + SLOW, "every connection was accepted");
}
