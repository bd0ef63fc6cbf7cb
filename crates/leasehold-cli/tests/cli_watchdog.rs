//! The watchdog process under its own faults: frozen alone (SIGSTOP of the watchdog, not of
//! leasehold), and its deadline held on `CLOCK_BOOTTIME` (a time namespace puts that clock
//! 100 s ahead of `CLOCK_MONOTONIC`, as 100 s of host suspend would).

use std::{
    io::Write as _,
    os::unix::process::CommandExt as _,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// A child that writes its pid to DIR/pid, then runs until killed.
const CHILD: &str = r#"echo $$ > "$DIR/pid"; while true; do sleep 0.05; done"#;

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        }
    }
}

fn send(pid: i32, sig: rustix::process::Signal) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::kill_process(pid, sig);
    }
}

/// The pid of `parent`'s child process running `leasehold __watchdog`.
fn watchdog_of(parent: u32) -> Option<i32> {
    std::fs::read_dir("/proc").ok()?.find_map(|e| {
        let pid: i32 = e.ok()?.file_name().to_str()?.parse().ok()?;
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        let ppid: u32 = stat
            .rsplit(')')
            .next()?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()?;
        (ppid == parent && cmdline.windows(10).any(|w| w == b"__watchdog")).then_some(pid)
    })
}

/// `leasehold run` on the file backend, 2 s / 1 s / 200 ms: it renews every 500 ms.
fn leasehold(dir: &Path) -> Child {
    leasehold_with(dir, ["2s", "1s", "200ms"])
}

/// `leasehold run` on the file backend with this lease, renew deadline and retry period.
fn leasehold_with(dir: &Path, [lease, renew, retry]: [&str; 3]) -> Child {
    Command::new(BIN)
        .args([
            "run",
            "--backend",
            "file",
            "--name",
            "w",
            "--id",
            "me",
            "--file",
        ])
        .arg(dir.join("lock.json"))
        .args([
            "--lease-duration",
            lease,
            "--renew-deadline",
            renew,
            "--retry-period",
            retry,
        ])
        .args(["--", "sh", "-c", CHILD])
        .env("DIR", dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn holder(dir: &Path) -> String {
    let text = std::fs::read_to_string(dir.join("lock.json")).unwrap_or_default();
    serde_json::from_str::<serde_json::Value>(&text)
        .ok()
        .and_then(|v| v["holderIdentity"].as_str().map(str::to_owned))
        .unwrap_or_default()
}

/// Starts leasehold with its child, and freezes the watchdog alone.
fn with_frozen_watchdog(dir: &Path) -> (Child, i32, i32) {
    frozen_watchdog_of(dir, leasehold(dir))
}

fn frozen_watchdog_of(dir: &Path, p: Child) -> (Child, i32, i32) {
    assert!(
        wait_for(Duration::from_secs(10), || dir.join("pid").exists()),
        "no child"
    );
    let child: i32 = std::fs::read_to_string(dir.join("pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let mut watchdog = None;
    assert!(wait_for(Duration::from_secs(5), || {
        watchdog = watchdog_of(p.id());
        watchdog.is_some()
    }));
    let watchdog = watchdog.unwrap();
    send(watchdog, rustix::process::Signal::STOP);
    (p, child, watchdog)
}

/// Waits up to `limit` for leasehold to exit, then kills the frozen watchdog and whatever is
/// left; says whether leasehold exited, after how long, and whether the child is dead.
fn outcome(p: &mut Child, child: i32, watchdog: i32, limit: Duration) -> (bool, Duration, bool) {
    let since = Instant::now();
    let exited = wait_for(limit, || p.try_wait().unwrap().is_some());
    let took = since.elapsed();
    let child_dead = is_dead(child);
    send(watchdog, rustix::process::Signal::KILL);
    send(watchdog, rustix::process::Signal::CONT);
    if !exited {
        send(p.id() as i32, rustix::process::Signal::KILL);
        send(child, rustix::process::Signal::KILL);
    }
    (exited, took, child_dead)
}

/// With its watchdog stopped, leasehold could no longer promise that a frozen leasehold's child
/// is killed in time. The watchdog reads every extension at once; one left unread means it is
/// stopped or stuck: that counts as a dead watchdog. (It used to be found out only when its
/// pipe filled, about 2,600 renewals later, and then the run loop blocked on the write.)
#[test]
fn a_watchdog_frozen_alone_is_found_out_the_child_stopped_and_the_lease_released() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut p, child, watchdog) = with_frozen_watchdog(d);
    let (exited, took, child_dead) = outcome(&mut p, child, watchdog, Duration::from_secs(5));
    println!(
        "watchdog frozen alone: leasehold exited {exited} after {took:?}, child dead {child_dead}"
    );
    assert!(
        exited,
        "leasehold still running 5 s after its watchdog froze"
    );
    assert!(child_dead, "the child outlived a frozen watchdog");
    assert_eq!(p.wait().unwrap().code(), Some(1));
    assert_eq!(holder(d), "", "the lease is released");
}

/// A SIGTERM while the watchdog is frozen: leasehold stops the child and releases at once; its
/// wait for the watchdog to exit is bounded (it used to wait forever, holding the lease).
#[test]
fn sigterm_with_a_frozen_watchdog_still_stops_the_child_and_releases() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut p, child, watchdog) = with_frozen_watchdog(d);
    send(p.id() as i32, rustix::process::Signal::TERM);
    let (exited, took, child_dead) = outcome(&mut p, child, watchdog, Duration::from_secs(3));
    println!(
        "SIGTERM with the watchdog frozen: exited {exited} after {took:?}, child dead {child_dead}"
    );
    assert!(exited, "leasehold still running 3 s after SIGTERM");
    assert!(child_dead);
    assert_eq!(p.wait().unwrap().code(), Some(0));
    assert_eq!(holder(d), "", "the lease is released");
}

/// The watchdog holds its deadline on `CLOCK_BOOTTIME`, which runs on through a host suspend
/// while `CLOCK_MONOTONIC` (and every relative timeout) stands still. In a time namespace whose
/// boot clock is 100 s ahead, a deadline 10 s ahead of the host's boot clock has long passed:
/// the watchdog kills the group at once. One that kept time on `CLOCK_MONOTONIC` would wait.
#[test]
fn the_watchdog_keeps_the_deadline_on_the_boot_clock() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut group = Command::new("sh")
        .args(["-c", CHILD])
        .env("DIR", d)
        .process_group(0)
        .spawn()
        .unwrap();
    assert!(wait_for(Duration::from_secs(5), || d.join("pid").exists()));
    let mut watchdog = Command::new("unshare")
        .args(["--time", "--boottime", "100", "--"])
        .arg(BIN)
        .args(["__watchdog", &group.id().to_string(), "100"])
        .stdin(Stdio::piped())
        .spawn()
        .expect("unshare (util-linux) runs the watchdog in a time namespace; needs root");
    let boot = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
    let boot_ns = u128::try_from(boot.tv_sec).unwrap() * 1_000_000_000
        + u128::try_from(boot.tv_nsec).unwrap();
    let deadline = boot_ns + 10_000_000_000;
    let sent = Instant::now();
    watchdog
        .stdin
        .as_mut()
        .unwrap()
        .write_all(format!("D {deadline}\n").as_bytes())
        .unwrap();
    let killed = wait_for(Duration::from_secs(5), || {
        group.try_wait().unwrap().is_some()
    });
    let took = sent.elapsed();
    if !killed {
        let _ = group.kill();
    }
    let _ = group.wait();
    drop(watchdog.stdin.take());
    let code = watchdog.wait().unwrap().code();
    println!(
        "deadline 10 s ahead on the host's boot clock, 100 s behind the watchdog's: group killed {killed} after {took:?}, watchdog exit {code:?}"
    );
    assert!(
        killed && took < Duration::from_secs(2),
        "the watchdog waited on another clock"
    );
    assert_eq!(code, Some(3), "exit 3: it killed the group at its deadline");
}

/// Renewals closer together than the unresponsiveness limit (2 s / 800 ms / 300 ms renews
/// every 0.40 to 0.48 s): the unread deadline is counted from the first one left unread, so a
/// frozen watchdog is still found out.
#[test]
fn a_frozen_watchdog_is_found_out_with_renewals_under_half_a_second_apart() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (mut p, child, watchdog) =
        frozen_watchdog_of(d, leasehold_with(d, ["2s", "800ms", "300ms"]));
    let (exited, took, child_dead) = outcome(&mut p, child, watchdog, Duration::from_secs(5));
    println!(
        "watchdog frozen, renewals every 0.4 s: leasehold exited {exited} after {took:?}, child dead {child_dead}"
    );
    assert!(
        exited,
        "leasehold still running 5 s after its watchdog froze"
    );
    assert!(child_dead);
    assert_eq!(p.wait().unwrap().code(), Some(1));
}
