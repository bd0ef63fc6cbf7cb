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
    time::{
        ClockId, Itimerspec, TimerfdClockId, TimerfdFlags, TimerfdTimerFlags, Timespec,
        clock_gettime, timerfd_create, timerfd_settime,
    },
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

/// What the watchdog must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Act {
    /// Send SIGTERM to the group.
    Term,
    /// Send SIGKILL to the group, then exit with this code.
    Kill(i32),
    /// Exit with this code, signalling nothing.
    Exit(i32),
}

/// The watchdog's decisions, with no clock and no I/O: the deadline and the SIGKILL time are
/// absolute `CLOCK_BOOTTIME` nanoseconds, and time is passed in. The shell around it sleeps on
/// an absolute boot-clock timer, never a relative timeout, so a host suspend (during which
/// `CLOCK_MONOTONIC` and every relative timeout stand still) cannot stretch the term.
#[derive(Debug)]
pub struct Core {
    term_at: Option<u128>,
    kill_at: Option<u128>,
    grace_ns: u128,
}

// === impl Core ===

impl Core {
    /// A watchdog with no deadline yet, that kills `grace` after SIGTERM.
    pub fn new(grace: Duration) -> Self {
        Self {
            term_at: None,
            kill_at: None,
            grace_ns: grace.as_nanos(),
        }
    }

    /// One line from the elector: `D <ns>` moves the deadline (only forward, and not once
    /// SIGTERM has been sent); `X` means the child ended normally.
    pub fn line(&mut self, line: &str) -> Option<Act> {
        let line = line.trim();
        if line == "X" {
            return Some(Act::Exit(0));
        }
        if let Some(ns) = line.strip_prefix("D ").and_then(|v| v.parse::<u128>().ok())
            && self.kill_at.is_none()
            && self.term_at.is_none_or(|t| ns > t)
        {
            self.term_at = Some(ns);
        }
        None
    }

    /// The elector's end of the pipe closed: it died, so nobody vouches for the lease.
    pub fn closed(&mut self) -> Act {
        Act::Kill(0)
    }

    /// The boot clock reads `now`: what is due.
    pub fn tick(&mut self, now: u128) -> Option<Act> {
        if let Some(t) = self.term_at.filter(|t| now >= *t)
            && self.kill_at.is_none()
        {
            self.kill_at = Some(t + self.grace_ns);
            if now < t + self.grace_ns {
                return Some(Act::Term);
            }
        }
        if self.kill_at.is_some_and(|k| now >= k) {
            return Some(Act::Kill(DEADLINE_EXIT));
        }
        None
    }

    /// When [`tick`](Self::tick) must next run, on the boot clock.
    pub fn next_wake(&self) -> Option<u128> {
        self.kill_at.or(self.term_at)
    }
}

/// Arms `timer` to fire at `at` (absolute `CLOCK_BOOTTIME` nanoseconds); `None` disarms it.
fn arm(timer: &rustix::fd::OwnedFd, at: Option<u128>) -> rustix::io::Result<()> {
    let zero = Timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // A zero value disarms a timerfd: a deadline at boot-clock zero is never real, so use 1 ns.
    let value = at.map_or(zero, |at| Timespec {
        tv_sec: i64::try_from(at / 1_000_000_000).unwrap_or(i64::MAX),
        tv_nsec: i64::try_from(at % 1_000_000_000)
            .unwrap_or(0)
            .max(i64::from(at == 0)),
    });
    timerfd_settime(
        timer,
        TimerfdTimerFlags::ABSTIME,
        &Itimerspec {
            it_interval: zero,
            it_value: value,
        },
    )
    .map(drop)
}

/// Runs the watchdog for process group `pgid`; returns the exit code.
pub fn run(pgid: i32, grace: Duration) -> i32 {
    let act = |a: Act| match a {
        Act::Term => {
            kill_group(pgid, Signal::TERM);
            None
        }
        Act::Kill(code) => {
            kill_group(pgid, Signal::KILL);
            Some(code)
        }
        Act::Exit(code) => Some(code),
    };
    // An absolute timer on the boot clock: it fires at the deadline however long the host was
    // suspended in between (at resume, if the deadline passed meanwhile).
    let timer = match timerfd_create(
        TimerfdClockId::Boottime,
        TimerfdFlags::CLOEXEC | TimerfdFlags::NONBLOCK,
    ) {
        Ok(t) => t,
        Err(_) => {
            kill_group(pgid, Signal::KILL);
            return 1;
        }
    };
    // Read from the descriptor itself, not through `Stdin`'s buffer: `poll` watches the
    // descriptor, so lines left in a user-space buffer would go unseen until the next write.
    let stdin = std::io::stdin();
    let mut buf = Vec::new();
    let mut core = Core::new(grace);
    loop {
        if let Some(code) = core.tick(monotonic_ns()).and_then(act) {
            return code;
        }
        if arm(&timer, core.next_wake()).is_err() {
            kill_group(pgid, Signal::KILL);
            return 1;
        }
        let mut fds = [
            PollFd::new(&stdin, PollFlags::IN),
            PollFd::new(&timer, PollFlags::IN),
        ];
        match poll(&mut fds, None) {
            Ok(_) => {}
            Err(rustix::io::Errno::INTR) => continue,
            Err(_) => {
                kill_group(pgid, Signal::KILL);
                return 1;
            }
        }
        if !fds[1].revents().is_empty() {
            // Clear the expiry count; `tick` decides what is due.
            let mut count = [0u8; 8];
            let _ = rustix::io::read(&timer, &mut count);
        }
        if fds[0].revents().is_empty() {
            continue;
        }
        let mut chunk = [0u8; 512];
        let n = match rustix::io::read(&stdin, &mut chunk) {
            Ok(n) => n,
            Err(rustix::io::Errno::INTR | rustix::io::Errno::AGAIN) => continue,
            Err(_) => 0,
        };
        if n == 0 {
            if let Some(code) = act(core.closed()) {
                return code;
            }
            continue;
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(pos) = buf.iter().position(|b| *b == b'\n') {
            let line: Vec<u8> = buf.drain(..=pos).collect();
            if let Some(code) = core.line(&String::from_utf8_lossy(&line)).and_then(act) {
                return code;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: u128 = 1_000_000_000;

    #[test]
    fn terms_at_the_deadline_and_kills_a_grace_later() {
        let mut c = Core::new(Duration::from_millis(500));
        assert_eq!(c.line("D 10000000000\n"), None);
        assert_eq!(c.next_wake(), Some(10 * S));
        assert_eq!(c.tick(10 * S - 1), None);
        assert_eq!(c.tick(10 * S), Some(Act::Term));
        assert_eq!(c.next_wake(), Some(10 * S + S / 2));
        assert_eq!(c.line("D 20000000000"), None, "no extension after SIGTERM");
        assert_eq!(c.next_wake(), Some(10 * S + S / 2));
        assert_eq!(c.tick(10 * S + S / 2), Some(Act::Kill(DEADLINE_EXIT)));
    }

    #[test]
    fn a_suspend_past_the_deadline_and_the_grace_kills_at_the_first_wake() {
        // Deadline at 10 s; the host sleeps from 9 s to 70 s with no line from the elector.
        // The absolute boot-clock timer wakes the watchdog at resume, and it kills at once: the
        // others' leases ran on through the suspend.
        let mut c = Core::new(Duration::from_secs(1));
        c.line("D 10000000000");
        assert_eq!(c.tick(9 * S), None);
        assert_eq!(
            c.next_wake(),
            Some(10 * S),
            "an absolute time, not a timeout"
        );
        assert_eq!(c.tick(70 * S), Some(Act::Kill(DEADLINE_EXIT)));
    }

    #[test]
    fn deadlines_only_move_forward_and_x_exits_quietly() {
        let mut c = Core::new(Duration::from_secs(1));
        c.line("D 10000000000");
        c.line("D 5000000000");
        assert_eq!(c.next_wake(), Some(10 * S));
        c.line("garbage");
        assert_eq!(c.next_wake(), Some(10 * S));
        assert_eq!(c.line("X"), Some(Act::Exit(0)));
        assert_eq!(c.closed(), Act::Kill(0));
    }
}
