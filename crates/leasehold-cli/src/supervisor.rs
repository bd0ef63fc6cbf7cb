//! What `leasehold run` does with its command, decided without I/O.
//!
//! The command must run only while this candidate leads, must be stopped before the lease can
//! pass to anyone else, and the lease must be released only once nothing of the command is
//! left. Those rules live here, in a [`Supervisor`] that takes [`Event`]s (a signal, a new
//! term, the child's exit, ...) with the time they happened and answers with the [`Action`]s
//! to take, in order. The run loop in `run.rs` only turns its sources into events and executes
//! the actions, feeding the outcome of an action (spawned, reaped) back as the next event. So
//! the shutdown order is a unit test with exact actions (below), and a new input is a new
//! event rather than a new `select!` arm.

use leasehold::{FencingToken, Timing};
use std::{
    io, ops::ControlFlow, os::unix::process::ExitStatusExt as _, process::ExitStatus,
    time::Duration,
};
use tokio::time::Instant;

/// After SIGKILL, the stop time moves a day on: the child stays marked as being stopped (the
/// end of its term then sends no SIGTERM), and a group still there a day later gets SIGKILL
/// again.
const AFTER_SIGKILL: Duration = Duration::from_secs(86_400);

/// How long after SIGTERM the command's group gets SIGKILL.
///
/// SIGKILL lands before others could take over: the step-down happens at renew deadline,
/// others wait a full lease duration; SIGKILL comes halfway through that margin.
pub(crate) fn kill_grace(timing: &Timing) -> Duration {
    (timing.lease_duration.saturating_sub(timing.renew_deadline)) / 2
}

/// A term, as the run loop read it when it reported it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Term {
    /// The term's fencing token, which names it.
    pub token: FencingToken,
    /// When the term ends unless renewed (it moves with [`Event::DeadlineMoved`]).
    pub valid_until: Instant,
    /// Whether it has already ended: a term can end before the run loop hears of it.
    pub lost: bool,
}

/// Something that happened, for [`Supervisor::handle`].
#[derive(Debug)]
pub(crate) enum Event {
    /// SIGTERM or SIGINT (its name): stop the command, then release. A second one forces.
    Signal(&'static str),
    /// This candidate started leading a term.
    Leading(Term),
    /// The current term ended (step-down, loss, or the elector's cancellation).
    TermLost {
        /// The term.
        token: FencingToken,
    },
    /// A renewal moved the current term's deadline.
    DeadlineMoved {
        /// The term.
        token: FencingToken,
        /// Its new deadline.
        valid_until: Instant,
    },
    /// Another leader (or, when empty, none) was observed.
    NewLeader(String),
    /// [`Action::Spawn`] started the command (in its own process group) and its watchdog.
    Spawned {
        /// The child's process group.
        pgid: u32,
    },
    /// [`Action::Spawn`] could not start the command.
    SpawnFailed(io::Error),
    /// [`Action::Spawn`] started the command but not its watchdog.
    WatchdogFailed {
        /// The child's process group.
        pgid: u32,
        /// Why the watchdog did not start.
        error: io::Error,
    },
    /// [`Action::ExtendWatchdog`] failed: the watchdog is gone or unresponsive.
    ExtendFailed(io::Error),
    /// The command's process exited (it may have left children in its group).
    ChildExited {
        /// How it ended.
        status: io::Result<ExitStatus>,
        /// Whether the watchdog had already killed the group at the term's deadline.
        watchdog_fired: bool,
    },
    /// The watchdog process exited while the command still ran.
    WatchdogExited(io::Result<ExitStatus>),
    /// [`Action::Reap`]: nothing of the command's group is left.
    GroupGone,
    /// [`Action::Reap`]: processes of the group survive SIGKILL.
    GroupSurvives,
    /// [`Supervisor::deadline`] has come.
    Timer,
    /// The election task has ended.
    ElectorEnded,
}

/// Something to do, from [`Supervisor::handle`]; the run loop executes them in order.
#[derive(Debug, PartialEq)]
pub(crate) enum Action {
    /// Start the command for this term (the current one) in its own process group, and its
    /// watchdog with the term's deadline last reported; report [`Event::Spawned`],
    /// [`Event::SpawnFailed`] or [`Event::WatchdogFailed`].
    Spawn {
        /// The term, for `LEASEHOLD_FENCING_TOKEN`.
        token: FencingToken,
    },
    /// SIGTERM to the command's process group.
    Terminate,
    /// SIGKILL to the command's process group.
    Kill,
    /// Move the watchdog's deadline to the one last reported (this instant on tokio's clock);
    /// report [`Event::ExtendFailed`] if it cannot be moved.
    ExtendWatchdog(Instant),
    /// SIGKILL the command's group, wait for the child, wait (a while) until nothing of the
    /// group is left, then finish the watchdog; report [`Event::GroupGone`] or
    /// [`Event::GroupSurvives`].
    Reap,
    /// SIGKILL the command's group, wait for the child and (a while) for the rest of the
    /// group, and finish the watchdog: the run is ending, with nothing to decide on the
    /// outcome (the election has already ended; a lease it did not release expires).
    StopChild,
    /// This candidate leads term `token`: tell the cluster. Label the Pod `leader` (and
    /// `standby` again the moment this term ends, however it ends: a task of its own waits for
    /// the end, so the label follows even while the run loop is busy reaping or unlabelling),
    /// and point the `--route-service` at this Pod.
    Announce {
        /// The term.
        token: FencingToken,
    },
    /// Label the Pod `standby`, waiting (2 s at most) until it sticks.
    Unlabel,
    /// Cancel the election: it steps down, releases the lease and ends.
    Cancel,
    /// End the election task without a release (and cancel, so its end is no surprise).
    AbortElector,
    /// Wait for the election task to end.
    AwaitElector,
    /// Report on `/healthz` that the election task died.
    ElectorDead,
    /// Stop the labeller and the HTTP server: the run is ending.
    StopTasks,
    /// A line on stdout.
    Say(String),
    /// End the run with this exit code.
    Exit(i32),
    /// End the run with this error.
    Fail(Failure),
}

/// Why the run fails.
#[derive(Debug)]
pub(crate) enum Failure {
    /// The command could not be started (the lease was released first).
    Spawn(io::Error),
    /// The watchdog could not be started (the command was stopped).
    Watchdog(io::Error),
}

// === impl Failure ===

impl PartialEq for Failure {
    fn eq(&self, other: &Self) -> bool {
        let same =
            |a: &io::Error, b: &io::Error| a.kind() == b.kind() && a.to_string() == b.to_string();
        match (self, other) {
            (Self::Spawn(a), Self::Spawn(b)) | (Self::Watchdog(a), Self::Watchdog(b)) => same(a, b),
            _ => false,
        }
    }
}

/// The command's process, as far as decisions go.
#[derive(Debug)]
struct Child {
    /// The term it was started for; older than the current one once that has changed.
    term: Term,
    /// Set once SIGTERM (or SIGKILL) was sent: when to send SIGKILL.
    kill_at: Option<Instant>,
    state: State,
}

#[derive(Debug)]
enum State {
    /// [`Action::Spawn`] was emitted; its outcome is next but for changes to the term, which
    /// come first. `told`: the deadline the watchdog starts with.
    Starting { told: Instant },
    /// Running under its watchdog.
    Running { pgid: u32 },
    /// [`Action::Reap`] was emitted; `then` says what its outcome leads to.
    Reaping { pgid: u32, then: Then },
}

#[derive(Debug)]
enum Then {
    /// The child exited with `code`; `stopped`: it was stopped (or its term was over), rather
    /// than ending by itself while leading.
    Exited { code: i32, stopped: bool },
    /// The watchdog could not start: fail with this error.
    Fail(io::Error),
}

/// The decisions of `leasehold run`: events in, actions out, time passed in.
#[derive(Debug)]
pub(crate) struct Supervisor {
    identity: String,
    has_command: bool,
    grace: Duration,
    /// The latest term; without a command, dropped once its end has been reported.
    current: Option<Term>,
    /// The latest term, kept after its end: what [`drained`](Self::drained) answers for.
    last: Option<Term>,
    child: Option<Child>,
    shutting_down: bool,
    /// The lease should be released (once the Pod is unlabelled).
    want_release: bool,
    /// The election was cancelled or aborted.
    cancelled: bool,
    exit_code: i32,
    /// An error to return once the lease is released.
    fatal: Option<Failure>,
}

// === impl Supervisor ===

impl Supervisor {
    /// A supervisor for `identity`; `has_command`: a command was given after `--`; `grace`:
    /// from SIGTERM to SIGKILL ([`kill_grace`]).
    pub(crate) fn new(identity: String, has_command: bool, grace: Duration) -> Self {
        Self {
            identity,
            has_command,
            grace,
            current: None,
            last: None,
            child: None,
            shutting_down: false,
            want_release: false,
            cancelled: false,
            exit_code: 0,
            fatal: None,
        }
    }

    /// When the run loop must deliver [`Event::Timer`]: the SIGKILL time of a command that was
    /// sent SIGTERM.
    pub(crate) fn deadline(&self) -> Option<Instant> {
        self.child
            .as_ref()
            .filter(|c| matches!(c.state, State::Running { .. }))
            .and_then(|c| c.kill_at)
    }

    /// The latest term that is over for the command: ended (or the run is shutting down, so no
    /// command will start for it), with nothing of the command's group left. The elector
    /// releases the lock only once its term is drained: a step-down, a transfer or a health
    /// gate never hands over while the command still runs, as a shutdown never does.
    pub(crate) fn drained(&self) -> Option<FencingToken> {
        let t = self.last?;
        ((t.lost || self.shutting_down) && self.child.is_none()).then_some(t.token)
    }

    /// Takes `event`, which happened at `now`; returns what to do, in order.
    pub(crate) fn handle(&mut self, event: Event, now: Instant) -> Vec<Action> {
        let mut out = Vec::new();
        if self.on(event, now, &mut out).is_break() {
            return out;
        }
        // After every event: a term's end is reported as it happens (without a command), and
        // a term whose deadline had passed when it was reported starts the command once a
        // renewal moves it (below).
        if !self.has_command {
            self.report_ended_term(&mut out);
        }
        if self.want_release && !self.cancelled {
            // Unlabel before releasing, so a Service on the label never selects two Pods
            // during a graceful handover.
            self.cancelled = true;
            out.extend([Action::Unlabel, Action::Cancel]);
        }
        self.start_child(now, &mut out);
        out
    }

    /// The event itself; `Break` when the run ends with it.
    fn on(&mut self, event: Event, now: Instant, out: &mut Vec<Action>) -> ControlFlow<()> {
        match event {
            Event::Signal(name) => self.on_signal(name, now, out),
            Event::Leading(term) => {
                out.push(Action::Say(format!(
                    "leading: {} (fencing token {})",
                    self.identity, term.token
                )));
                out.push(Action::Announce { token: term.token });
                self.current = Some(term);
                self.last = Some(term);
            }
            Event::TermLost { token } => {
                self.update(token, |t| t.lost = true);
                self.stop_if_term_lost(now, out);
            }
            Event::DeadlineMoved { token, valid_until } => {
                self.update(token, |t| t.valid_until = valid_until);
                if let Some(c) = &self.child
                    && matches!(c.state, State::Running { .. })
                    && c.term.token == token
                {
                    out.push(Action::ExtendWatchdog(valid_until));
                }
            }
            Event::NewLeader(who) => {
                if who.is_empty() {
                    out.push(Action::Say("released: no leader".into()));
                } else if who != self.identity {
                    out.push(Action::Say(format!("leader: {who}")));
                }
            }
            Event::Spawned { pgid } => {
                if let Some(c) = &mut self.child
                    && let State::Starting { told } = c.state
                {
                    c.state = State::Running { pgid };
                    tracing::info!(pid = pgid, fencing_token = %c.term.token, "started command");
                    // Renewals reported while the watchdog was starting.
                    if c.term.valid_until != told {
                        out.push(Action::ExtendWatchdog(c.term.valid_until));
                    }
                    self.stop_if_term_lost(now, out);
                }
            }
            Event::SpawnFailed(source) => {
                // Nobody acts on this term: release it now rather than make the others wait a
                // lease duration, then report why.
                self.child = None;
                self.fatal = Some(Failure::Spawn(source));
                self.shutting_down = true;
                self.want_release = true;
            }
            Event::WatchdogFailed { pgid, error } => {
                // Never leave a child running without its guard.
                if let Some(c) = &mut self.child {
                    c.state = State::Reaping {
                        pgid,
                        then: Then::Fail(error),
                    };
                    out.push(Action::Reap);
                }
            }
            Event::ExtendFailed(error) => {
                if let Some(c) = &mut self.child {
                    // Without a working watchdog a frozen leasehold could not stop the child
                    // in time: stop it now, and exit.
                    tracing::error!(error = %error, "watchdog is gone or unresponsive; stopping command");
                    kill(c, now, out);
                    self.shutting_down = true;
                    self.exit_code = 1;
                }
            }
            Event::Timer => {
                if let Some(c) = &mut self.child
                    && let State::Running { pgid } = c.state
                    && c.kill_at.is_some_and(|at| now >= at)
                {
                    tracing::warn!(pid = pgid, "command still running after SIGTERM; SIGKILL");
                    kill(c, now, out);
                    c.kill_at = Some(now + AFTER_SIGKILL);
                }
            }
            Event::ChildExited {
                status,
                watchdog_fired,
            } => self.on_child_exited(&status, watchdog_fired, now, out),
            Event::WatchdogExited(status) => self.on_watchdog_exited(&status, now, out),
            Event::GroupGone => return self.on_reaped(true, out),
            Event::GroupSurvives => return self.on_reaped(false, out),
            Event::ElectorEnded => {
                self.on_elector_ended(out);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn on_signal(&mut self, name: &'static str, now: Instant, out: &mut Vec<Action>) {
        if self.shutting_down {
            // A second signal: SIGKILL now. The release still waits until the command's group
            // is gone (the child-exit path does it).
            tracing::warn!(signal = name, "second signal: killing the command");
            match &mut self.child {
                Some(c) => kill(c, now, out),
                None if !self.cancelled => {
                    self.cancelled = true;
                    out.push(Action::Cancel);
                }
                None => {}
            }
            return;
        }
        self.shutting_down = true;
        tracing::info!(
            signal = name,
            "shutting down: stopping the command, then releasing the lease"
        );
        match &mut self.child {
            // Stop the child while still leading; release only once it has exited.
            Some(c) => terminate(c, self.grace, now, out),
            None => self.want_release = true,
        }
    }

    fn on_child_exited(
        &mut self,
        status: &io::Result<ExitStatus>,
        watchdog_fired: bool,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = &mut self.child else { return };
        let State::Running { pgid } = c.state else {
            return;
        };
        // The term was over if the watchdog fired or its deadline passed, even if this process
        // (frozen until now) has not heard of the step-down yet.
        let term_over = c.term.lost || watchdog_fired || now >= c.term.valid_until;
        let token = c.term.token;
        let code = match status {
            Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
            Err(_) => 1,
        };
        let stopped = c.kill_at.is_some() || term_over || self.shutting_down;
        c.state = State::Reaping {
            pgid,
            then: Then::Exited { code, stopped },
        };
        // Nothing of the group may be left before anyone else may start, or a new child.
        out.push(Action::Reap);
        if watchdog_fired {
            self.spend(token);
        }
    }

    fn on_watchdog_exited(
        &mut self,
        status: &io::Result<ExitStatus>,
        now: Instant,
        out: &mut Vec<Action>,
    ) {
        let Some(c) = &mut self.child else { return };
        kill(c, now, out);
        let token = c.term.token;
        if matches!(status, Ok(s) if s.code() == Some(crate::watchdog::DEADLINE_EXIT)) {
            // Its deadline passed while this process could not act (frozen or stalled): it
            // killed the group, as designed.
            tracing::warn!("watchdog stopped the command at the term's deadline");
            self.spend(token);
        } else {
            // The watchdog must outlive the child; without it the frozen-elector guarantee is
            // gone, so stop the child and exit.
            tracing::error!(?status, "watchdog exited unexpectedly; stopped the command");
            if !self.shutting_down {
                self.shutting_down = true;
                self.exit_code = 1;
            }
        }
    }

    /// The outcome of [`Action::Reap`]: `gone` when nothing of the group is left.
    fn on_reaped(&mut self, gone: bool, out: &mut Vec<Action>) -> ControlFlow<()> {
        let Some(Child {
            state: State::Reaping { pgid, then },
            ..
        }) = self
            .child
            .take_if(|c| matches!(c.state, State::Reaping { .. }))
        else {
            return ControlFlow::Continue(());
        };
        match then {
            Then::Exited { code, stopped } if gone => {
                if stopped {
                    tracing::info!(code, "command stopped");
                    out.push(Action::Say(format!("stopped leading: {}", self.identity)));
                    if self.shutting_down {
                        self.want_release = true;
                    }
                } else {
                    // It ended by itself: release and exit with its code.
                    tracing::info!(code, "command exited; releasing the lease");
                    self.exit_code = code;
                    self.shutting_down = true;
                    self.want_release = true;
                }
            }
            Then::Exited { .. } => {
                // They may still finish a write (uninterruptible sleep): never hand the lease
                // over early. Without a release the others wait out the lease, by which time
                // the step-down's margin has passed as well. Nor may a new term start a second
                // child beside them: stop contending. Ending the election task (not cancelling
                // it) skips the release.
                tracing::error!(
                    pgid,
                    "processes of the command's group survive SIGKILL (uninterruptible sleep?); not releasing the lease (it expires instead) and exiting"
                );
                out.push(Action::AbortElector);
                self.cancelled = true;
                self.shutting_down = true;
                self.exit_code = 1;
            }
            Then::Fail(error) => {
                // Unlabel first, as on every way out: the Pod must not keep `leader` after
                // this process has gone.
                out.push(Action::Unlabel);
                if gone {
                    out.push(Action::Cancel);
                } else {
                    // As when the command exits: survivors may still act, so no release; the
                    // lease expires.
                    tracing::error!(
                        pgid,
                        "processes of the command's group survive SIGKILL; not releasing the lease"
                    );
                    out.push(Action::AbortElector);
                }
                self.cancelled = true;
                out.extend([
                    Action::AwaitElector,
                    Action::StopTasks,
                    Action::Fail(Failure::Watchdog(error)),
                ]);
                return ControlFlow::Break(());
            }
        }
        ControlFlow::Continue(())
    }

    fn on_elector_ended(&mut self, out: &mut Vec<Action>) {
        if !self.cancelled {
            out.push(Action::ElectorDead);
            tracing::error!("the election task ended unexpectedly");
            self.exit_code = 1;
        }
        if self.child.take().is_some() {
            out.push(Action::StopChild);
        }
        out.extend([Action::Unlabel, Action::StopTasks]);
        if !self.has_command
            && let Some(t) = &self.current
        {
            out.push(Action::Say(format!(
                "stopped leading: {} (fencing token {})",
                self.identity, t.token
            )));
        }
        out.push(match self.fatal.take() {
            Some(f) => Action::Fail(f),
            None => Action::Exit(self.exit_code),
        });
    }

    /// The watchdog ended term `token`'s command at its deadline (on the boot clock, which
    /// counts a suspended host's sleep where this process's clock may not): the term is over
    /// for the command, whatever the election has heard yet. No second command starts for it,
    /// which would get the same deadline, already past.
    fn spend(&mut self, token: FencingToken) {
        self.update(token, |t| t.lost = true);
    }

    /// Applies `f` to term `token`, as current term and as the child's.
    fn update(&mut self, token: FencingToken, f: impl Fn(&mut Term)) {
        let child = self.child.as_mut().map(|c| &mut c.term);
        for t in [self.current.as_mut(), self.last.as_mut(), child]
            .into_iter()
            .flatten()
        {
            if t.token == token {
                f(t);
            }
        }
    }

    /// The term the child acts for has ended: stop it (SIGTERM, SIGKILL after the grace).
    fn stop_if_term_lost(&mut self, now: Instant, out: &mut Vec<Action>) {
        if let Some(c) = &mut self.child
            && let State::Running { pgid } = c.state
            && c.term.lost
            && c.kill_at.is_none()
        {
            tracing::warn!(pid = pgid, "leadership ended; stopping command (SIGTERM)");
            terminate(c, self.grace, now, out);
        }
    }

    /// Without a command, reports the end of the current term.
    fn report_ended_term(&mut self, out: &mut Vec<Action>) {
        if let Some(t) = self.current.take_if(|t| t.lost) {
            out.push(Action::Say(format!(
                "stopped leading: {} (fencing token {})",
                self.identity, t.token
            )));
        }
    }

    /// Starts the command when leading and no earlier child is left.
    fn start_child(&mut self, now: Instant, out: &mut Vec<Action>) {
        if self.child.is_some() || self.shutting_down || !self.has_command {
            return;
        }
        let Some(term) = self.current.filter(|t| !t.lost && t.valid_until > now) else {
            return;
        };
        self.child = Some(Child {
            term,
            kill_at: None,
            state: State::Starting {
                told: term.valid_until,
            },
        });
        out.push(Action::Spawn { token: term.token });
    }
}

/// SIGTERM, once; SIGKILL follows after the grace.
fn terminate(c: &mut Child, grace: Duration, now: Instant, out: &mut Vec<Action>) {
    if c.kill_at.is_none() {
        out.push(Action::Terminate);
        // Never later than the watchdog's own SIGKILL for this term.
        let by_term = c.term.valid_until + grace;
        c.kill_at = Some((now + grace).min(by_term.max(now)));
    }
}

/// SIGKILL now.
fn kill(c: &mut Child, now: Instant, out: &mut Vec<Action>) {
    out.push(Action::Kill);
    if c.kill_at.is_none() {
        c.kill_at = Some(now + AFTER_SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    /// With the default timing (15 s / 10 s / 2 s): half of 15 s - 10 s.
    const GRACE: Duration = Duration::from_millis(2500);
    const PGID: u32 = 4242;

    fn supervisor(has_command: bool) -> Supervisor {
        let grace = kill_grace(&Timing::default());
        assert_eq!(grace, GRACE);
        Supervisor::new("me".into(), has_command, grace)
    }
    fn term(token: u64, valid_until: Instant) -> Term {
        Term {
            token: FencingToken(token),
            valid_until,
            lost: false,
        }
    }
    fn exited(code: i32) -> io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(code << 8))
    }
    fn signalled(signal: i32) -> io::Result<ExitStatus> {
        Ok(ExitStatus::from_raw(signal))
    }
    fn child_exited(status: io::Result<ExitStatus>) -> Event {
        Event::ChildExited {
            status,
            watchdog_fired: false,
        }
    }
    fn say(line: &str) -> Action {
        Action::Say(line.into())
    }
    fn leading(token: u64) -> Action {
        say(&format!("leading: me (fencing token {token})"))
    }
    /// A supervisor whose command runs for term 0 (valid until t0 + 10 s), started at t0.
    fn running(t0: Instant) -> Supervisor {
        let mut s = supervisor(true);
        assert_eq!(
            s.handle(Event::Leading(term(0, t0 + 10 * S)), t0),
            vec![
                leading(0),
                Action::Announce {
                    token: FencingToken(0)
                },
                Action::Spawn {
                    token: FencingToken(0)
                },
            ]
        );
        assert_eq!(s.handle(Event::Spawned { pgid: PGID }, t0), vec![]);
        assert_eq!(s.deadline(), None);
        s
    }

    #[test]
    fn a_signal_while_standing_by_unlabels_then_releases_and_exits_0() {
        let t0 = Instant::now();
        let mut s = supervisor(true);
        assert_eq!(
            s.handle(Event::NewLeader("other".into()), t0),
            vec![say("leader: other")]
        );
        assert_eq!(
            s.handle(Event::Signal("SIGTERM"), t0),
            vec![Action::Unlabel, Action::Cancel]
        );
        // A second signal finds the election already cancelled.
        assert_eq!(s.handle(Event::Signal("SIGINT"), t0), vec![]);
        assert_eq!(
            s.handle(Event::ElectorEnded, t0),
            vec![Action::Unlabel, Action::StopTasks, Action::Exit(0)]
        );
    }

    #[test]
    fn a_signal_terminates_the_child_and_kills_it_after_the_grace() {
        let t0 = Instant::now();
        let mut s = running(t0);
        assert_eq!(
            s.handle(Event::Signal("SIGTERM"), t0 + S),
            vec![Action::Terminate]
        );
        assert_eq!(s.deadline(), Some(t0 + S + GRACE));
        assert_eq!(s.handle(Event::Timer, t0 + S + GRACE), vec![Action::Kill]);
        assert_eq!(
            s.deadline(),
            Some(t0 + S + GRACE + AFTER_SIGKILL),
            "no second SIGKILL unless a day passes"
        );
    }

    #[test]
    fn the_sigkill_time_is_never_later_than_the_watchdogs_for_the_term() {
        let t0 = Instant::now();
        // 9 s in: now plus the grace.
        let mut s = running(t0);
        s.handle(Event::Signal("SIGTERM"), t0 + 9 * S);
        assert_eq!(s.deadline(), Some(t0 + 9 * S + GRACE));
        // 11 s in (frozen past the deadline): the deadline plus the grace comes first.
        let mut s = running(t0);
        s.handle(Event::Signal("SIGTERM"), t0 + 11 * S);
        assert_eq!(s.deadline(), Some(t0 + 10 * S + GRACE));
        // Past the deadline and its grace: SIGKILL at once.
        let mut s = running(t0);
        s.handle(Event::Signal("SIGTERM"), t0 + 20 * S);
        assert_eq!(s.deadline(), Some(t0 + 20 * S));
        assert_eq!(s.handle(Event::Timer, t0 + 20 * S), vec![Action::Kill]);
    }

    #[test]
    fn a_term_is_drained_for_the_elector_only_once_its_command_is_gone() {
        let t0 = Instant::now();
        let lost = |token| Event::TermLost {
            token: FencingToken(token),
        };
        // Stepped down (or handed over): the command still runs, so the lock is not released.
        let mut s = running(t0);
        assert_eq!(s.drained(), None);
        assert_eq!(s.handle(lost(0), t0 + S), vec![Action::Terminate]);
        assert_eq!(s.drained(), None);
        assert_eq!(
            s.handle(child_exited(signalled(15)), t0 + 2 * S),
            vec![Action::Reap]
        );
        assert_eq!(s.drained(), None, "its group may still act");
        s.handle(Event::GroupGone, t0 + 2 * S);
        assert_eq!(s.drained(), Some(FencingToken(0)));
        // The next term: not drained while it runs.
        s.handle(Event::Leading(term(3, t0 + 12 * S)), t0 + 3 * S);
        assert_eq!(s.drained(), None);
        // Shutting down: drained once the command is gone, before the term ends (the elector
        // ends it only when cancelled, and the run loop then waits for the elector).
        let mut s = running(t0);
        s.handle(Event::Signal("SIGTERM"), t0 + S);
        s.handle(child_exited(signalled(15)), t0 + S);
        assert_eq!(s.drained(), None);
        s.handle(Event::GroupGone, t0 + S);
        assert_eq!(s.drained(), Some(FencingToken(0)));
        // Without a command: drained as it ends.
        let mut s = supervisor(false);
        s.handle(Event::Leading(term(5, t0 + 10 * S)), t0);
        assert_eq!(s.drained(), None);
        s.handle(lost(5), t0 + S);
        assert_eq!(s.drained(), Some(FencingToken(5)));
    }

    #[test]
    fn after_a_signal_the_lease_is_released_only_once_the_group_is_gone() {
        let t0 = Instant::now();
        let mut s = running(t0);
        assert_eq!(
            s.handle(Event::Signal("SIGTERM"), t0 + S),
            vec![Action::Terminate]
        );
        assert_eq!(
            s.handle(child_exited(signalled(15)), t0 + 2 * S),
            vec![Action::Reap]
        );
        assert_eq!(s.deadline(), None);
        // What changed while reaping comes first, and starts nothing.
        assert_eq!(
            s.handle(
                Event::TermLost {
                    token: FencingToken(0)
                },
                t0 + 2 * S
            ),
            vec![]
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + 2 * S),
            vec![say("stopped leading: me"), Action::Unlabel, Action::Cancel]
        );
        assert_eq!(
            s.handle(Event::NewLeader(String::new()), t0 + 2 * S),
            vec![say("released: no leader")]
        );
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + 3 * S),
            vec![Action::Unlabel, Action::StopTasks, Action::Exit(0)],
            "stopped by the signal: exit 0, not the child's 143"
        );
    }

    #[test]
    fn a_second_signal_kills_the_child_and_the_release_still_waits_for_the_group() {
        let t0 = Instant::now();
        let mut s = running(t0);
        s.handle(Event::Signal("SIGTERM"), t0);
        assert_eq!(
            s.handle(Event::Signal("SIGINT"), t0 + S),
            vec![Action::Kill]
        );
        assert_eq!(s.deadline(), Some(t0 + GRACE), "the SIGKILL time stays");
        assert_eq!(
            s.handle(child_exited(signalled(9)), t0 + S),
            vec![Action::Reap]
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + S),
            vec![say("stopped leading: me"), Action::Unlabel, Action::Cancel]
        );
    }

    #[test]
    fn a_lost_term_terminates_the_child_and_keeps_contending() {
        let t0 = Instant::now();
        let mut s = running(t0);
        let lost = || Event::TermLost {
            token: FencingToken(0),
        };
        assert_eq!(s.handle(lost(), t0 + S), vec![Action::Terminate]);
        assert_eq!(s.deadline(), Some(t0 + S + GRACE));
        assert_eq!(s.handle(lost(), t0 + S), vec![], "SIGTERM once");
        assert_eq!(
            s.handle(child_exited(signalled(15)), t0 + 2 * S),
            vec![Action::Reap]
        );
        // Not shutting down: no release, no exit; the label went back with the term.
        assert_eq!(
            s.handle(Event::GroupGone, t0 + 2 * S),
            vec![say("stopped leading: me")]
        );
    }

    #[test]
    fn a_new_term_starts_no_second_child_before_the_old_one_is_reaped() {
        let t0 = Instant::now();
        let mut s = running(t0);
        s.handle(
            Event::TermLost {
                token: FencingToken(0),
            },
            t0 + S,
        );
        assert_eq!(
            s.handle(Event::Leading(term(1, t0 + 12 * S)), t0 + 2 * S),
            vec![
                leading(1),
                Action::Announce {
                    token: FencingToken(1)
                }
            ]
        );
        // The new term's renewals do not reach the old child's watchdog.
        assert_eq!(
            s.handle(
                Event::DeadlineMoved {
                    token: FencingToken(1),
                    valid_until: t0 + 13 * S
                },
                t0 + 3 * S
            ),
            vec![]
        );
        assert_eq!(
            s.handle(child_exited(signalled(15)), t0 + 3 * S),
            vec![Action::Reap]
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + 3 * S),
            vec![
                say("stopped leading: me"),
                Action::Spawn {
                    token: FencingToken(1)
                }
            ]
        );
    }

    #[test]
    fn renewals_extend_the_watchdog_even_while_stopping() {
        let t0 = Instant::now();
        let mut s = running(t0);
        let moved = |at| Event::DeadlineMoved {
            token: FencingToken(0),
            valid_until: at,
        };
        assert_eq!(
            s.handle(moved(t0 + 12 * S), t0 + 2 * S),
            vec![Action::ExtendWatchdog(t0 + 12 * S)]
        );
        s.handle(Event::Signal("SIGTERM"), t0 + 3 * S);
        assert_eq!(
            s.handle(moved(t0 + 14 * S), t0 + 4 * S),
            vec![Action::ExtendWatchdog(t0 + 14 * S)]
        );
    }

    #[test]
    fn changes_while_the_watchdog_starts_reach_it_once_started() {
        let t0 = Instant::now();
        let mut s = supervisor(true);
        s.handle(Event::Leading(term(0, t0 + 10 * S)), t0);
        assert_eq!(
            s.handle(
                Event::DeadlineMoved {
                    token: FencingToken(0),
                    valid_until: t0 + 11 * S
                },
                t0
            ),
            vec![]
        );
        assert_eq!(
            s.handle(
                Event::TermLost {
                    token: FencingToken(0)
                },
                t0
            ),
            vec![]
        );
        assert_eq!(
            s.handle(Event::Spawned { pgid: PGID }, t0),
            vec![Action::ExtendWatchdog(t0 + 11 * S), Action::Terminate]
        );
        assert_eq!(s.deadline(), Some(t0 + GRACE));
    }

    #[test]
    fn a_child_exiting_by_itself_releases_and_exits_with_its_code() {
        let t0 = Instant::now();
        let mut s = running(t0);
        assert_eq!(
            s.handle(child_exited(exited(7)), t0 + S),
            vec![Action::Reap]
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + S),
            vec![Action::Unlabel, Action::Cancel]
        );
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + 2 * S),
            vec![Action::Unlabel, Action::StopTasks, Action::Exit(7)]
        );
        // Killed by a signal: 128 + its number, as shells report it.
        let mut s = running(t0);
        s.handle(child_exited(signalled(9)), t0 + S);
        s.handle(Event::GroupGone, t0 + S);
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + S).last(),
            Some(&Action::Exit(137))
        );
    }

    #[test]
    fn a_child_exiting_after_its_terms_deadline_was_stopped_not_done() {
        let t0 = Instant::now();
        // Frozen past the deadline, not told of the step-down yet.
        let mut s = running(t0);
        s.handle(child_exited(exited(0)), t0 + 10 * S);
        assert_eq!(
            s.handle(Event::GroupGone, t0 + 10 * S),
            vec![say("stopped leading: me")]
        );
        // Killed by the watchdog: see
        // a_term_whose_command_the_watchdog_stopped_starts_no_second_command.
    }

    #[test]
    fn a_watchdog_exit_at_its_deadline_stops_the_child_and_keeps_contending() {
        let t0 = Instant::now();
        let mut s = running(t0);
        assert_eq!(
            s.handle(
                Event::WatchdogExited(exited(crate::watchdog::DEADLINE_EXIT)),
                t0 + 10 * S
            ),
            vec![Action::Kill]
        );
        s.handle(
            Event::ChildExited {
                status: signalled(9),
                watchdog_fired: true,
            },
            t0 + 10 * S,
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + 10 * S),
            vec![say("stopped leading: me")]
        );
    }

    #[test]
    fn an_unexpected_watchdog_exit_stops_the_child_releases_and_exits_1() {
        let t0 = Instant::now();
        let mut s = running(t0);
        assert_eq!(
            s.handle(Event::WatchdogExited(exited(1)), t0 + S),
            vec![Action::Kill]
        );
        assert_eq!(
            s.handle(child_exited(signalled(9)), t0 + S),
            vec![Action::Reap]
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + S),
            vec![say("stopped leading: me"), Action::Unlabel, Action::Cancel]
        );
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + S),
            vec![Action::Unlabel, Action::StopTasks, Action::Exit(1)]
        );
    }

    #[test]
    fn a_watchdog_that_cannot_be_extended_kills_the_child_and_exits_1() {
        let t0 = Instant::now();
        let mut s = running(t0);
        s.handle(
            Event::DeadlineMoved {
                token: FencingToken(0),
                valid_until: t0 + 12 * S,
            },
            t0 + 2 * S,
        );
        assert_eq!(
            s.handle(Event::ExtendFailed(io::Error::other("stuck")), t0 + 2 * S),
            vec![Action::Kill]
        );
        assert_eq!(
            s.handle(child_exited(signalled(9)), t0 + 2 * S),
            vec![Action::Reap]
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + 2 * S),
            vec![say("stopped leading: me"), Action::Unlabel, Action::Cancel]
        );
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + 3 * S),
            vec![Action::Unlabel, Action::StopTasks, Action::Exit(1)]
        );
    }

    #[test]
    fn a_group_surviving_sigkill_ends_the_election_without_a_release_and_exits_1() {
        let t0 = Instant::now();
        let mut s = running(t0);
        s.handle(Event::Signal("SIGTERM"), t0);
        s.handle(child_exited(signalled(15)), t0 + S);
        assert_eq!(
            s.handle(Event::GroupSurvives, t0 + 2 * S),
            vec![Action::AbortElector]
        );
        // A new term must not start a second child beside the survivors.
        assert_eq!(
            s.handle(Event::Leading(term(1, t0 + 20 * S)), t0 + 2 * S),
            vec![
                leading(1),
                Action::Announce {
                    token: FencingToken(1)
                }
            ]
        );
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + 2 * S),
            vec![Action::Unlabel, Action::StopTasks, Action::Exit(1)]
        );
    }

    #[test]
    fn a_command_that_cannot_start_releases_then_fails() {
        let t0 = Instant::now();
        let mut s = supervisor(true);
        s.handle(Event::Leading(term(0, t0 + 10 * S)), t0);
        let e = || io::Error::from(io::ErrorKind::NotFound);
        assert_eq!(
            s.handle(Event::SpawnFailed(e()), t0),
            vec![Action::Unlabel, Action::Cancel]
        );
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + S),
            vec![
                Action::Unlabel,
                Action::StopTasks,
                Action::Fail(Failure::Spawn(e()))
            ]
        );
    }

    #[test]
    fn a_watchdog_that_cannot_start_stops_the_child_and_releases_only_if_its_group_is_gone() {
        let t0 = Instant::now();
        let e = || io::Error::other("no exe");
        let failed = || Event::WatchdogFailed {
            pgid: PGID,
            error: e(),
        };
        for (outcome, end) in [
            (Event::GroupGone, Action::Cancel),
            (Event::GroupSurvives, Action::AbortElector),
        ] {
            let mut s = supervisor(true);
            s.handle(Event::Leading(term(0, t0 + 10 * S)), t0);
            assert_eq!(s.handle(failed(), t0), vec![Action::Reap]);
            assert_eq!(
                s.handle(outcome, t0),
                vec![
                    Action::Unlabel,
                    end,
                    Action::AwaitElector,
                    Action::StopTasks,
                    Action::Fail(Failure::Watchdog(e()))
                ]
            );
        }
    }

    #[test]
    fn the_election_ending_unexpectedly_stops_the_child_and_exits_1() {
        let t0 = Instant::now();
        let mut s = running(t0);
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + S),
            vec![
                Action::ElectorDead,
                Action::StopChild,
                Action::Unlabel,
                Action::StopTasks,
                Action::Exit(1)
            ]
        );
    }

    #[test]
    fn a_child_starts_only_for_a_live_term_and_not_while_shutting_down() {
        let t0 = Instant::now();
        let lead = |s: &mut Supervisor, t: Term| s.handle(Event::Leading(t), t0 + S);
        let no_spawn = |token| {
            vec![
                leading(token),
                Action::Announce {
                    token: FencingToken(token),
                },
            ]
        };
        // Reported already over.
        let mut s = supervisor(true);
        let lost = Term {
            lost: true,
            ..term(0, t0 + 10 * S)
        };
        assert_eq!(lead(&mut s, lost), no_spawn(0));
        // Its deadline passed.
        let mut s = supervisor(true);
        assert_eq!(lead(&mut s, term(0, t0 + S)), no_spawn(0));
        // Shutting down.
        let mut s = supervisor(true);
        s.handle(Event::Signal("SIGTERM"), t0);
        assert_eq!(lead(&mut s, term(0, t0 + 10 * S)), no_spawn(0));
        // No command.
        let mut s = supervisor(false);
        assert_eq!(lead(&mut s, term(0, t0 + 10 * S)), no_spawn(0));
    }

    /// As in the first version of the loop, a renewal of a term whose child was not started
    /// (its deadline had passed) starts nothing by itself; the next wake-up does.
    #[test]
    fn a_term_reported_past_its_deadline_starts_the_command_once_a_renewal_moves_it() {
        let t0 = Instant::now();
        let mut s = supervisor(true);
        // Reported after its deadline (this process was frozen, say): no command yet.
        assert_eq!(
            s.handle(Event::Leading(term(0, t0)), t0),
            vec![
                leading(0),
                Action::Announce {
                    token: FencingToken(0)
                }
            ]
        );
        assert_eq!(
            s.handle(
                Event::DeadlineMoved {
                    token: FencingToken(0),
                    valid_until: t0 + 10 * S
                },
                t0 + S
            ),
            vec![Action::Spawn {
                token: FencingToken(0)
            }]
        );
    }

    #[test]
    fn a_term_whose_command_the_watchdog_stopped_starts_no_second_command() {
        let t0 = Instant::now();
        let mut s = running(t0);
        // The watchdog fired on the boot clock (a suspended host): the election has not
        // stepped down, and the term's deadline on this clock has not passed.
        s.handle(
            Event::ChildExited {
                status: signalled(9),
                watchdog_fired: true,
            },
            t0 + S,
        );
        assert_eq!(
            s.handle(Event::GroupGone, t0 + S),
            vec![say("stopped leading: me")]
        );
        let renewed = Event::DeadlineMoved {
            token: FencingToken(0),
            valid_until: t0 + 20 * S,
        };
        assert_eq!(s.handle(renewed, t0 + 2 * S), vec![]);
        // The next term starts one.
        assert_eq!(
            s.handle(Event::Leading(term(1, t0 + 30 * S)), t0 + 3 * S),
            vec![
                leading(1),
                Action::Announce {
                    token: FencingToken(1)
                },
                Action::Spawn {
                    token: FencingToken(1)
                }
            ]
        );
    }

    #[test]
    fn without_a_command_it_reports_each_term_and_releases_on_a_signal() {
        let t0 = Instant::now();
        let mut s = supervisor(false);
        assert_eq!(
            s.handle(Event::NewLeader("other".into()), t0),
            vec![say("leader: other")]
        );
        assert_eq!(
            s.handle(Event::Leading(term(3, t0 + 10 * S)), t0),
            vec![
                leading(3),
                Action::Announce {
                    token: FencingToken(3)
                }
            ]
        );
        assert_eq!(s.handle(Event::NewLeader("me".into()), t0), vec![]);
        assert_eq!(
            s.handle(Event::Signal("SIGTERM"), t0 + S),
            vec![Action::Unlabel, Action::Cancel]
        );
        // The end of the term is reported as it happens.
        assert_eq!(
            s.handle(
                Event::TermLost {
                    token: FencingToken(3)
                },
                t0 + S
            ),
            vec![say("stopped leading: me (fencing token 3)")]
        );
        assert_eq!(
            s.handle(Event::NewLeader(String::new()), t0 + S),
            vec![say("released: no leader")]
        );
        assert_eq!(
            s.handle(Event::ElectorEnded, t0 + S),
            vec![Action::Unlabel, Action::StopTasks, Action::Exit(0)],
            "reported once"
        );
    }

    /// Every term's end is reported, also when the next term follows at once (the first
    /// version of the loop reported it only at its next wake-up, and never when that was the
    /// next term), and also when nothing else happens (the API server is down, say).
    #[test]
    fn without_a_command_each_terms_end_is_reported_as_it_happens() {
        let t0 = Instant::now();
        let mut s = supervisor(false);
        s.handle(Event::Leading(term(3, t0 + 10 * S)), t0);
        let lost = Event::TermLost {
            token: FencingToken(3),
        };
        assert_eq!(
            s.handle(lost, t0 + S),
            vec![say("stopped leading: me (fencing token 3)")]
        );
        assert_eq!(
            s.handle(Event::Leading(term(4, t0 + 12 * S)), t0 + 2 * S),
            vec![
                leading(4),
                Action::Announce {
                    token: FencingToken(4)
                }
            ]
        );
    }

    #[test]
    fn without_a_command_a_term_still_held_at_the_end_is_reported_then() {
        let t0 = Instant::now();
        let mut s = supervisor(false);
        s.handle(Event::Leading(term(0, t0 + 10 * S)), t0);
        assert_eq!(
            s.handle(Event::ElectorEnded, t0),
            vec![
                Action::ElectorDead,
                Action::Unlabel,
                Action::StopTasks,
                say("stopped leading: me (fencing token 0)"),
                Action::Exit(1)
            ]
        );
    }
}
