//! The watchdog: a tiny separate process that kills the child's process group when the leader's
//! term ends, even if the elector process is frozen (SIGSTOP), hung, or dead.
//!
//! Why a process and not a task: a task shares the elector's fate. If the elector is stopped by
//! SIGSTOP, stalls in its runtime, or is killed, the child must still be stopped before the lease
//! can expire for others. The elector extends the watchdog's deadline after every successful
//! renewal, by writing `D <ns>\n` (an absolute `CLOCK_BOOTTIME` time, shared by all processes)
//! to the watchdog's stdin. At that deadline the watchdog sends SIGTERM to the group, and SIGKILL
//! `grace` later. If the pipe reaches EOF (the elector died) it sends SIGKILL at once. `X\n`
//! means the child ended normally: the watchdog exits.
//!
//! It runs in its own process group, so job control and group-wide signals aimed at leasehold
//! (Ctrl-Z, `kill -STOP -PGID`, Ctrl-C) do not reach it; its stdin is its only control channel.
//! It has no parent-death signal on purpose: the EOF of its stdin is how it learns of
//! the elector's death, and it must outlive the elector to kill the child's whole group
//! (grandchildren included, which a parent-death signal on the child alone would miss).

use rustix::{
    event::{PollFd, PollFlags, poll},
    process::{Pid, Signal, kill_process_group},
    time::{ClockId, Timespec, clock_gettime},
};
use std::time::Duration;

/// The watchdog's exit code after it killed the group at its deadline.
pub const DEADLINE_EXIT: i32 = 3;

/// Now on `CLOCK_BOOTTIME`, in nanoseconds: like `CLOCK_MONOTONIC`, shared by all processes,
/// but it keeps counting while the host is suspended, as other hosts' clocks do.
pub fn monotonic_ns() -> u128 {
    let t = clock_gettime(ClockId::Boottime);
    u128::try_from(t.tv_sec).unwrap_or(0) * 1_000_000_000 + u128::try_from(t.tv_nsec).unwrap_or(0)
}

fn kill_group(pgid: i32, sig: Signal) {
    if let Some(pid) = Pid::from_raw(pgid) {
        // ESRCH (already gone) is fine.
        let _ = kill_process_group(pid, sig);
    }
}

/// Runs the watchdog for process group `pgid`; returns the exit code.
pub fn run(pgid: i32, grace: Duration) -> i32 {
    // Read from the descriptor itself, not through `Stdin`'s buffer: `poll` watches the
    // descriptor, so lines left in a user-space buffer would go unseen until the next write.
    let stdin = std::io::stdin();
    let mut buf = Vec::new();
    let mut term_at: Option<u128> = None;
    let mut kill_at: Option<u128> = None;
    let grace_ns = grace.as_nanos();
    loop {
        let now = monotonic_ns();
        if let Some(t) = term_at.filter(|t| now >= *t)
            && kill_at.is_none()
        {
            kill_group(pgid, Signal::TERM);
            kill_at = Some(t + grace_ns);
        }
        if kill_at.is_some_and(|k| now >= k) {
            kill_group(pgid, Signal::KILL);
            return DEADLINE_EXIT;
        }
        let next = kill_at.or(term_at);
        let timeout = next.map(|n| {
            let left = n.saturating_sub(now);
            Timespec {
                tv_sec: i64::try_from(left / 1_000_000_000).unwrap_or(i64::MAX),
                tv_nsec: i64::try_from(left % 1_000_000_000).unwrap_or(0),
            }
        });
        let mut fds = [PollFd::new(&stdin, PollFlags::IN)];
        match poll(&mut fds, timeout.as_ref()) {
            Ok(0) => continue,
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => {
                kill_group(pgid, Signal::KILL);
                return 1;
            }
        }
        let mut chunk = [0u8; 512];
        let n = match rustix::io::read(&stdin, &mut chunk) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(_) => 0,
        };
        if n == 0 {
            // The elector is gone: nobody can vouch for the lease any more.
            kill_group(pgid, Signal::KILL);
            return 0;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            let line = String::from_utf8_lossy(&line);
            let line = line.trim();
            if line == "X" {
                return 0;
            }
            if let Some(ns) = line.strip_prefix("D ").and_then(|v| v.parse::<u128>().ok()) {
                // A deadline only moves forward, and not once SIGTERM has been sent.
                if kill_at.is_none() && term_at.is_none_or(|t| ns > t) {
                    term_at = Some(ns);
                }
            }
        }
    }
}
