//! Starting the leader's child process and its watchdog.

use crate::watchdog::monotonic_ns;
use leasehold::Deadline;
use std::{ffi::OsString, io, process::Stdio, time::Duration};
use tokio::{
    io::AsyncWriteExt as _,
    process::{Child, ChildStdin, Command},
    time::Instant,
};

/// Waits until no process of group `pgid` is left, up to `limit`; returns whether it is gone.
/// The direct child being reaped is not enough: its own children share the group and may still
/// be running (or finishing a write) after SIGKILL was sent.
pub async fn wait_group_gone(pgid: u32, limit: Duration) -> bool {
    let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    else {
        return true;
    };
    let deadline = Instant::now() + limit;
    loop {
        if rustix::process::test_kill_process_group(pid).is_err() || only_zombies_in(pgid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Whether every process left in group `pgid` has exited and only waits to be reaped. An
/// orphaned grandchild is reparented to PID 1, which may reap late or never (a minimal init,
/// or leasehold itself as a container's PID 1): a zombie acts on nothing, so it does not count.
/// A process shows as a zombie once its main thread has exited, while another thread may still
/// be finishing a write in uninterruptible sleep: every thread must have exited.
fn only_zombies_in(pgid: u32) -> bool {
    let exited = |stat: &str| {
        let state = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .next();
        matches!(state, Some("Z" | "X"))
    };
    let all_threads_exited = |pid: &str| {
        let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
            // Gone meanwhile.
            return true;
        };
        tasks
            .flatten()
            .all(|t| std::fs::read_to_string(t.path().join("stat")).map_or(true, |s| exited(&s)))
    };
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return false;
    };
    for entry in dir.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        // After the command name: state, ppid, pgrp.
        let mut fields = stat.rsplit(')').next().unwrap_or("").split_whitespace();
        let (Some(state), Some(_), Some(group)) = (fields.next(), fields.next(), fields.next())
        else {
            continue;
        };
        if group == pgid.to_string() && (!matches!(state, "Z" | "X") || !all_threads_exited(pid)) {
            return false;
        }
    }
    true
}

/// Why the command after `--` cannot be run, found before contending.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CommandProblem {
    /// Not on `PATH`, or no such file (exit 127, as shells do).
    #[error("not found")]
    NotFound,
    /// It exists but is a directory or has no execute permission (exit 126, as shells do).
    #[error("not an executable file")]
    NotExecutable,
}

impl CommandProblem {
    /// The exit code a shell would give for it.
    pub fn exit_code(self) -> i32 {
        match self {
            Self::NotFound => 127,
            Self::NotExecutable => 126,
        }
    }
}

/// Checks that `program` can be executed, the way `execvp` looks for it: a name with a `/` as
/// it stands, any other in each directory of `PATH`. The spawn can still fail later (the file
/// may go away); this only keeps a typo from taking the lease on every replica in turn.
pub fn check_program(program: &std::ffi::OsStr) -> Result<(), CommandProblem> {
    use std::os::unix::fs::PermissionsExt as _;
    use std::path::{Path, PathBuf};
    let runnable = |p: &Path| match std::fs::metadata(p) {
        Ok(m) if m.is_file() && m.permissions().mode() & 0o111 != 0 => Ok(()),
        Ok(_) => Err(CommandProblem::NotExecutable),
        Err(_) => Err(CommandProblem::NotFound),
    };
    if program.is_empty() {
        return Err(CommandProblem::NotFound);
    }
    if program.as_encoded_bytes().contains(&b'/') {
        return runnable(Path::new(program));
    }
    // glibc's execvp searches this when PATH is unset.
    let path = std::env::var_os("PATH").unwrap_or_else(|| OsString::from("/bin:/usr/bin"));
    let mut found = Err(CommandProblem::NotFound);
    for dir in std::env::split_paths(&path) {
        let dir = if dir.as_os_str().is_empty() {
            PathBuf::from(".")
        } else {
            dir
        };
        match runnable(&dir.join(program)) {
            Ok(()) => return Ok(()),
            // Like execvp: a later directory may still hold an executable one.
            Err(CommandProblem::NotExecutable) => found = Err(CommandProblem::NotExecutable),
            Err(CommandProblem::NotFound) => {}
        }
    }
    found
}

/// Starts `command` in its own process group with the leadership in its environment, tied to
/// this process by a parent-death signal.
///
/// # Errors
/// If the program cannot be started (not found, not executable).
pub fn spawn(command: &[OsString], env: &[(&str, String)]) -> io::Result<Child> {
    let (program, args) = command
        .split_first()
        .ok_or_else(|| io::Error::other("empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(args).process_group(0).kill_on_drop(false);
    for (k, v) in env {
        cmd.env(k, v);
    }
    die_with_parent(&mut cmd);
    cmd.spawn()
}

/// Makes the child receive SIGKILL when this process dies, however it dies (even SIGKILL), so
/// no orphan keeps acting as leader.
#[allow(unsafe_code)] // The one place: Linux offers PR_SET_PDEATHSIG only from inside the child.
fn die_with_parent(cmd: &mut Command) {
    let parent = rustix::process::getpid();
    // SAFETY: `pre_exec` runs the closure in the forked child before `exec`, where only
    // async-signal-safe operations are allowed. The closure makes two system calls through
    // rustix (prctl(PR_SET_PDEATHSIG) and getppid), which neither allocate nor take locks, and
    // builds its error from a constant errno without allocating.
    unsafe {
        cmd.pre_exec(move || {
            rustix::process::set_parent_process_death_signal(Some(rustix::process::Signal::KILL))?;
            // If the parent died between fork and prctl, the signal will never come: bail out.
            if rustix::process::getppid() != Some(parent) {
                return Err(rustix::io::Errno::SRCH.into());
            }
            Ok(())
        });
    }
}

/// The elector's end of a watchdog process.
pub struct Watchdog {
    process: Child,
    stdin: Option<ChildStdin>,
    last: Option<Deadline>,
    /// When the oldest extension still unread by the watchdog was written: set by a write that
    /// found the pipe empty, kept while lines wait in it.
    unread_since: Option<Instant>,
}

/// How long an extension may sit unread in the watchdog's pipe before the watchdog counts as
/// dead. It reads each line the moment it arrives; one still unread this much later means it
/// is stopped or stuck, and then it would not stop the child at the deadline either.
pub const UNRESPONSIVE_AFTER: Duration = Duration::from_millis(500);

/// The longest a write to the watchdog, or the wait for it to exit, may take.
const WATCHDOG_IO_LIMIT: Duration = Duration::from_millis(200);

// === impl Watchdog ===

impl Watchdog {
    /// Starts a watchdog for the child's process group `pgid` that sends SIGTERM at `until`
    /// (unless extended) and SIGKILL `grace` later.
    ///
    /// # Errors
    /// If this executable cannot be started again.
    pub async fn start(pgid: u32, grace: Duration, until: Deadline) -> io::Result<Self> {
        // /proc/self/exe still works after the binary was replaced on disk (an in-place upgrade),
        // where current_exe() names a deleted path.
        let exe = if std::path::Path::new("/proc/self/exe").exists() {
            std::path::PathBuf::from("/proc/self/exe")
        } else {
            std::env::current_exe()?
        };
        let mut process = Command::new(exe)
            .arg("__watchdog")
            // Its own group: signals aimed at leasehold's group (Ctrl-Z, Ctrl-C, kill -STOP
            // -PGID) must not stop or kill the one process that guards the deadline.
            .process_group(0)
            .arg(pgid.to_string())
            .arg(grace.as_millis().to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .kill_on_drop(false)
            .spawn()?;
        let stdin = process.stdin.take();
        let mut w = Self {
            process,
            stdin,
            last: None,
            unread_since: None,
        };
        w.extend(until).await?;
        Ok(w)
    }

    /// Moves the deadline to `until`.
    ///
    /// The boot-clock deadline is the elector's own ([`Deadline::boottime`], taken at the
    /// renewal's send); converting the monotonic one here, after the answer, would add any
    /// host suspend in between to the term.
    ///
    /// # Errors
    /// If the watchdog is gone, or unresponsive: an earlier extension still unread after
    /// [`UNRESPONSIVE_AFTER`] (it is stopped or stuck), or a write that does not complete
    /// within 200 ms (its pipe is full). Never waits longer than that.
    pub async fn extend(&mut self, until: Deadline) -> io::Result<()> {
        if self.last == Some(until) {
            return Ok(());
        }
        let stdin = self
            .stdin
            .as_mut()
            .ok_or_else(|| io::Error::other("watchdog closed"))?;
        // Bytes still in the pipe: the watchdog has not read them. Counted from the write that
        // found the pipe empty, so renewals closer together than the limit cannot hide it.
        let unread = rustix::io::ioctl_fionread(&*stdin).map_or(0, |n| n);
        if unread == 0 {
            self.unread_since = None;
        }
        if let Some(at) = self.unread_since
            && at.elapsed() >= UNRESPONSIVE_AFTER
        {
            return Err(io::Error::other(format!(
                "the watchdog has not read a deadline written {:?} ago: it is stopped or stuck",
                at.elapsed()
            )));
        }
        self.last = Some(until);
        let at = match until.boottime {
            Some(boot) => boot.as_nanos(),
            None => {
                monotonic_ns()
                    + until
                        .at
                        .saturating_duration_since(Instant::now())
                        .as_nanos()
            }
        };
        match tokio::time::timeout(
            WATCHDOG_IO_LIMIT,
            stdin.write_all(format!("D {at}\n").as_bytes()),
        )
        .await
        {
            Ok(r) => r?,
            Err(_) => {
                return Err(io::Error::other(
                    "the watchdog's pipe is full: it has stopped reading",
                ));
            }
        }
        self.unread_since.get_or_insert_with(Instant::now);
        Ok(())
    }

    /// Tells the watchdog the child is done, and waits (briefly) for it to exit; one that does
    /// not (stopped, stuck) is killed, so a frozen watchdog never holds up the release.
    pub async fn finish(mut self) {
        if let Some(mut stdin) = self.stdin.take() {
            let _ = tokio::time::timeout(WATCHDOG_IO_LIMIT, stdin.write_all(b"X\n")).await;
        }
        if tokio::time::timeout(WATCHDOG_IO_LIMIT, self.process.wait())
            .await
            .is_err()
        {
            tracing::warn!("the watchdog did not exit when told; killing it");
            let _ = self.process.start_kill();
            let _ = tokio::time::timeout(WATCHDOG_IO_LIMIT, self.process.wait()).await;
        }
    }

    /// Completes if the watchdog process exits (it should not while the child runs).
    pub async fn exited(&mut self) -> io::Result<std::process::ExitStatus> {
        self.process.wait().await
    }

    /// Whether the watchdog has already killed the group at its deadline.
    pub fn fired(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(Some(s)) if s.code() == Some(crate::watchdog::DEADLINE_EXIT))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A process whose main thread has exited shows as a zombie while another thread still
    /// runs (it could be finishing a write in uninterruptible sleep): the group is not gone.
    #[test]
    fn a_zombie_main_thread_with_a_live_thread_is_not_gone() {
        use std::os::unix::process::CommandExt as _;
        let mut p = std::process::Command::new("python3")
            .args([
                "-c",
                "import ctypes, threading, time\n\
                 threading.Thread(target=time.sleep, args=(3,)).start()\n\
                 ctypes.CDLL(None).pthread_exit(None)\n",
            ])
            .process_group(0)
            .spawn()
            .expect("python3");
        let pgid = p.id();
        let stat = || std::fs::read_to_string(format!("/proc/{pgid}/stat")).unwrap_or_default();
        let zombie = |s: &str| {
            s.rsplit(')')
                .next()
                .unwrap_or("")
                .trim_start()
                .starts_with('Z')
        };
        let deadline = Instant::now() + Duration::from_secs(2);
        while !zombie(&stat()) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(zombie(&stat()), "the main thread did not exit: {}", stat());
        let gone = only_zombies_in(pgid);
        let _ = p.kill();
        let _ = p.wait();
        assert!(!gone, "a live thread of a zombie process counted as gone");
    }
}
