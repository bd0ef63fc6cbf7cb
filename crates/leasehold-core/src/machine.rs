//! The election state machine: events in, actions out, time passed in, no I/O.
//!
//! The driver (the `leasehold` crate) feeds it every read result, write result, watch event and
//! timer, and carries out the [`Action`]s it returns. Because time is an argument, the rules can
//! be tested exactly, and the driver can run on tokio's paused clock.
//!
//! # The rules
//! - **Takeover** is allowed only when the record is released (empty holder), is a write this
//!   candidate made itself, or has been observed *unchanged* for its own `leaseDurationSeconds`,
//!   measured on the local monotonic clock from when it was first observed. A record naming this
//!   identity that this process did not write is foreign: unlike client-go, a restarted
//!   candidate does not resume it at once, because the "previous incarnation" may be a live
//!   twin with the same identity. If such a record *changes* while observed, another process is
//!   renewing under this identity: [`Action::DuplicateIdentity`] reports it. The record's wall-clock timestamps never
//!   decide expiry, so clock offset between hosts is harmless.
//! - **Step-down** happens when no renewal has succeeded within the renew deadline, counted from
//!   the *send* time of the last one that did. Others wait at least the lease duration from when
//!   they observe that renewal, which is later than its send time, so the leader stops first.
//! - Every request carries a deadline; a leader's renewals never outlive its step-down time.
//! - A conflict means: read again and decide again. A valid lease of another holder is never
//!   overwritten.
//! - Every acquisition writes `leaderTransitions + 1`, which is the term's [`FencingToken`].

use crate::{
    config::Timing,
    lock::{ErrorKind, Version, Versioned},
    record::{FencingToken, LeaderRecord},
};
use jiff::Timestamp;
use std::{collections::VecDeque, sync::Arc, time::Duration};

/// Monotonic time since an arbitrary origin, on the driver's clock.
pub type Tick = Duration;

/// What happened, as the driver reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The driver is starting: the machine asks for a first read.
    Start,
    /// The in-flight [`Action::Read`] completed.
    ReadDone(Result<Option<Versioned>, ErrorKind>),
    /// The watch delivered the object's state (`None`: deleted).
    Watched(Option<Versioned>),
    /// The in-flight [`Action::Create`] or [`Action::Update`] completed.
    WriteDone(Result<Version, ErrorKind>),
    /// The time returned by [`Machine::deadline`] has come.
    Timer,
    /// Shutdown was requested: step down, release if configured, then finish.
    Cancel,
    /// Step down on request, and do not contend before `hold_off` has passed: a leader stops
    /// (its work drains first, with [`Machine::with_drain`]), releases the lock so that another
    /// candidate takes over at once, and stays a standby; a standby sits out. Unlike
    /// [`Event::Cancel`], the candidate keeps running and contends again afterwards.
    StepDown {
        /// How long not to contend, from now. Zero: contend again at once, which another
        /// candidate watching the lock usually wins, being already told of the release.
        hold_off: Duration,
    },
    /// End the hold-off of an earlier [`Event::StepDown`] now: contend again (a health probe
    /// that passes again, say). Nothing else changes.
    Resume,
    /// Hand the lock to the candidate `to` (a directed transfer): a leader ends its term, drains,
    /// and writes a record naming `to` as holder, with the next token and a handover mark
    /// ([`LeaderRecord::handover_from`]), then sits out a lease duration. Other candidates see
    /// a held lock and wait; `to` takes the term on seeing the mark. If `to` never does, the
    /// record expires a lease after it was written. Ignored unless leading, and for this
    /// candidate's own identity or an empty one.
    Transfer {
        /// The candidate to hand over to.
        to: String,
    },
    /// The watch ([`Action::Watch`]) ended or failed: changes may have been missed, so the next
    /// step reads again, and another watch is opened after a backoff.
    WatchLost,
    /// The leader work of the last term has returned (with [`Machine::with_drain`]): the
    /// candidate may release the lock, and contend again.
    Drained,
    /// A read or the watch found the object at `version`, but its record cannot be decoded
    /// ([`crate::LockError::Corrupt`] with a version). The machine never overwrites it unless it
    /// has seen that version unchanged for a full lease duration (its own, since the record's
    /// cannot be read), and then says so with [`Action::ReplaceUnreadable`].
    Unreadable {
        /// The version of the object holding the unreadable record.
        version: Version,
        /// Whether this came from a read (as opposed to the watch).
        from_read: bool,
    },
}

/// What the driver must do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Action {
    /// Read the record; report [`Event::ReadDone`]. Give up at `deadline` (report
    /// `ErrorKind::Timeout`).
    Read {
        /// When the request must be abandoned.
        deadline: Tick,
    },
    /// Create the object with `record`; report [`Event::WriteDone`].
    Create {
        /// The record to write.
        record: LeaderRecord,
        /// When the request must be abandoned.
        deadline: Tick,
    },
    /// Compare-and-swap `record` at `version`; report [`Event::WriteDone`].
    Update {
        /// The record to write.
        record: LeaderRecord,
        /// The version it must replace.
        version: Version,
        /// When the request must be abandoned.
        deadline: Tick,
    },
    /// Abandon the request in flight, if any (its outcome is no longer needed).
    Abandon,
    /// Open a watch on the lock from `from` (`None`: from now), and report what it delivers
    /// with [`Event::Watched`] and [`Event::Unreadable`], and its end with
    /// [`Event::WatchLost`]. At most one is open at a time.
    Watch {
        /// The version to watch from: the last one observed.
        from: Option<Version>,
    },
    /// Close the watch: this candidate no longer needs one.
    Unwatch,
    /// This candidate leads from now on, with this token.
    StartedLeading {
        /// The term's fencing token.
        token: FencingToken,
    },
    /// This candidate must stop acting now.
    StoppedLeading {
        /// The token of the term that ended.
        token: FencingToken,
        /// Why.
        reason: StepDown,
    },
    /// The holder of the lock changed (empty: released). Fired once per change.
    NewLeader {
        /// The new holder.
        identity: String,
    },
    /// Another process writes records under this candidate's identity (two candidates share one
    /// identity). Emitted when seen, at most once per lease duration; the driver reports it
    /// loudly. This candidate never treats those records as its own.
    DuplicateIdentity {
        /// The record the other process wrote.
        record: LeaderRecord,
    },
    /// The next action overwrites a record that could not be read, after seeing it unchanged
    /// for `unchanged_for` (at least a lease duration). The driver logs it.
    ReplaceUnreadable {
        /// The version being replaced.
        version: Version,
        /// How long it was observed unchanged.
        unchanged_for: Duration,
    },
    /// The leader work of the term `token` has not returned in time (with
    /// [`Machine::with_drain`]): by the end of its term, nor within half the safety margin of
    /// being told to stop. It is the work's bug: it may act while another candidate leads. The
    /// driver reports it; the machine still waits for [`Event::Drained`] before releasing the
    /// lock or contending again.
    WorkOverran {
        /// The token of the term whose work overran.
        token: FencingToken,
    },
    /// The watch has delivered nothing for `silent_for` while a read shows the lock changed:
    /// it is stuck without having ended (a connection a middlebox dropped without a reset,
    /// say). The machine replaces it ([`Action::Unwatch`], then [`Action::Watch`]); the driver
    /// logs it.
    WatchStale {
        /// How long the watch had been silent.
        silent_for: Duration,
    },
    /// The machine is done (after a cancel); the driver may return.
    Finished,
}

/// Why a leader stepped down.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum StepDown {
    /// No renewal succeeded within the renew deadline.
    DeadlineExceeded,
    /// The record now names another holder, or another term.
    Lost {
        /// Who holds it now (may be empty).
        holder: String,
    },
    /// The lock object was deleted.
    Deleted,
    /// Another process renewed the lock under this candidate's identity.
    DuplicateIdentity,
    /// Someone replaced the record with one that cannot be read.
    Unreadable,
    /// Shutdown was requested.
    Cancelled,
    /// A step-down was requested ([`Event::StepDown`]).
    Requested,
    /// A transfer to `to` was requested ([`Event::Transfer`]).
    Transferred {
        /// The candidate handed to.
        to: String,
    },
    /// The lock's `preferredHolder` (Coordinated Leader Election) names another candidate:
    /// the term ends and the lock is released to it.
    Preferred {
        /// The candidate named.
        holder: String,
    },
}

/// Whether this candidate leads.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
#[non_exhaustive]
pub enum Role {
    /// Not leading; watching for a chance to acquire.
    #[default]
    Standby,
    /// Leading.
    Leader,
    /// Finished after a cancel.
    Stopped,
}

/// A snapshot of what this candidate knows, published by the driver after every event.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Status {
    /// This candidate's role.
    pub role: Role,
    /// The holder of the lock as last observed; empty before the first observation and while
    /// the lock is released.
    pub leader: String,
    /// The current term's token while leading.
    pub fencing_token: Option<FencingToken>,
    /// Whether the lock has been observed at least once.
    pub observed: bool,
    /// The lock's last observed record, if any.
    pub record: Option<LeaderRecord>,
    /// The last failure talking to the lock, until a request succeeds again (set by the
    /// driver): its kind, so a program can act on it (exit on
    /// [`Forbidden`](crate::FailureKind::Forbidden)), the object and the message.
    pub last_error: Option<crate::LastError>,
    /// On elections that queue (etcd): the identity of the candidate queued right after this
    /// one, the only one a leader can hand over to. `None` on locks, and at the end of a queue.
    pub next_in_line: Option<String>,
}

#[derive(Debug)]
struct Seen {
    record: Option<LeaderRecord>,
    version: Option<Version>,
    /// [`Versioned::change_key`]: compared with the record to tell a renewal.
    key: Option<Arc<str>>,
    /// The object exists at `version` but its record cannot be decoded (`record` is `None`).
    unreadable: bool,
    /// When this record was first observed, unchanged since.
    since: Tick,
}

#[derive(Debug, Clone)]
struct Term {
    token: FencingToken,
    transitions: i32,
    acquire_time: Option<Timestamp>,
    /// Send time of the last renewal (or the acquisition) that succeeded.
    last_ok_sent: Tick,
    renew_at: Tick,
    /// Set when `renew_at` is the routine renewal after a success (not a retry after a failure
    /// or a conflict): the end of its jitter window. Only a routine renewal may be late by
    /// [`Machine::timer_slack`], and never past this, so the retries that fit between it and
    /// the step-down are the same as without slack.
    routine_until: Option<Tick>,
    /// The early try of [`leader_retry_at`] has been made since the last successful renewal.
    early_try_made: bool,
    /// The send time and record of the first write of the latest run of this term's writes that
    /// landed or may have landed (a timeout, a 5xx) and that read alike at whole seconds. See
    /// [`Machine::credit`].
    landed: Option<(Tick, LeaderRecord)>,
}

#[derive(Debug)]
enum State {
    Standby,
    Leading(Term),
    /// Stepped down after a cancel; writing the released record until `give_up`.
    Releasing {
        term: Term,
        retry_at: Tick,
        give_up: Tick,
    },
    Finished,
}

#[derive(Debug)]
enum Inflight {
    Read,
    Acquire { sent_at: Tick, record: LeaderRecord },
    Renew { sent_at: Tick, record: LeaderRecord },
    Release { record: LeaderRecord },
}

/// The wait before opening a watch after one that delivered has ended.
const WATCH_BACKOFF: Duration = Duration::from_millis(100);

/// How many request latencies the request budget looks back on.
const LATENCIES: usize = 8;

/// How many of its own recent writes a candidate remembers, to recognise them when they come
/// back through the watch (possibly out of order with write responses).
const OWN_WRITES: usize = 8;

/// The election state machine of one candidate on one lock.
///
/// Replaces the decision logic of client-go's `LeaderElector` (`tryAcquireOrRenew`, `renew`,
/// `release`), with client-go's semantics and these differences: expiry from observation on the
/// monotonic clock only, a deadline on every request, a watch instead of polling, a release that
/// survives a conflict, and a fencing token incremented on every acquisition.
#[derive(Debug)]
pub struct Machine {
    identity: String,
    timing: Timing,
    state: State,
    seen: Option<Seen>,
    /// The last observation may be out of date (after a conflict, timeout or error).
    stale: bool,
    /// Time of the last successful read or watch event.
    last_heard: Tick,
    /// After an error: do nothing before this time.
    retry_at: Option<Tick>,
    inflight: Option<Inflight>,
    /// When the request in flight was sent.
    inflight_sent: Option<Tick>,
    /// How long the last [`LATENCIES`] requests took (a timed-out one: until it was abandoned),
    /// newest at `latency_next - 1`: the request timeout grows with them on a slow network.
    latencies: [Duration; LATENCIES],
    latency_next: usize,
    reported_leader: Option<String>,
    /// Records this candidate wrote, newest last.
    own_writes: VecDeque<LeaderRecord>,
    /// When a duplicate identity was last reported.
    duplicate_reported_at: Option<Tick>,
    cancelling: bool,
    /// After [`Event::StepDown`]: no acquisition before this time.
    hold_off_until: Option<Tick>,
    /// The candidate a transfer in progress hands the lock to: the release writes a handover.
    handing_to: Option<String>,
    rng: u64,
    /// The highest `leaderTransitions` ever observed: a re-created lock continues from it, so
    /// tokens never go backwards even if the object is deleted.
    max_transitions: Option<i32>,
    /// When the lock disappeared while held: the holder's lease still runs, measured from the
    /// observation of the deletion, before the lock may be re-created.
    deleted_lease: Option<Duration>,
    /// The lease duration of the last readable record that named a holder: a record that
    /// turns unreadable is replaced only after the longer of it and this candidate's own, since
    /// its holder may still be renewing with its own, longer, lease.
    last_holder_lease: Option<Duration>,
    /// The version an acquisition was refused at with a conflict. Reading the same version
    /// back means the backend contradicts itself (a `MultiLock` with one side unreadable, say):
    /// the next try waits a retry period instead of looping at round-trip rate.
    conflicted_at: Option<Version>,
    /// Expiry from the record's `renewTime` instead of from observation (Go's
    /// `UseObservedTime = false`). Off by default: it trusts the holder's clock.
    record_time_expiry: bool,
    /// The monotonic and wall-clock times of the last event, to convert record times to ticks.
    last_clock: (Tick, Timestamp),
    /// Whether the driver runs leader work that must return before the lock is released or
    /// taken again ([`Machine::with_drain`]).
    drain: bool,
    /// A watch is open ([`Action::Watch`] emitted, no [`Action::Unwatch`] or
    /// [`Event::WatchLost`] since).
    watching: bool,
    /// After a watch ended: no new one before this time.
    watch_retry_at: Option<Tick>,
    /// How long to wait before opening a watch after the next one ends: 100 ms after a watch
    /// that delivered, doubling up to the retry period while they keep failing.
    watch_backoff: Duration,
    /// The work of the term that ended last has not returned yet.
    draining: Option<Draining>,
}

/// Leader work still running after its term ended.
#[derive(Debug, Clone, Copy)]
struct Draining {
    token: FencingToken,
    /// When the work is late: the end of its term, or half the safety margin after it was told
    /// to stop, whichever is later.
    overrun_at: Tick,
    /// [`Action::WorkOverran`] has been emitted.
    overran: bool,
}

// === impl Machine ===

impl Machine {
    /// A machine for `identity` with `timing`, and a seed for the renewal jitter.
    ///
    /// # Errors
    /// [`crate::ConfigError`] when the identity is empty or the timing is invalid.
    pub fn new(
        identity: impl Into<String>,
        timing: Timing,
        seed: u64,
    ) -> Result<Self, crate::ConfigError> {
        let identity = identity.into();
        if identity.is_empty() {
            return Err(crate::ConfigError::EmptyIdentity);
        }
        timing.validate()?;
        Ok(Self {
            identity,
            timing,
            state: State::Standby,
            seen: None,
            stale: true,
            last_heard: Duration::ZERO,
            retry_at: None,
            inflight: None,
            inflight_sent: None,
            latencies: [Duration::ZERO; LATENCIES],
            latency_next: 0,
            reported_leader: None,
            own_writes: VecDeque::with_capacity(OWN_WRITES),
            duplicate_reported_at: None,
            cancelling: false,
            hold_off_until: None,
            handing_to: None,
            rng: seed | 1,
            max_transitions: None,
            deleted_lease: None,
            last_holder_lease: None,
            conflicted_at: None,
            record_time_expiry: false,
            last_clock: (Duration::ZERO, Timestamp::UNIX_EPOCH),
            drain: false,
            draining: None,
            watching: false,
            watch_retry_at: None,
            watch_backoff: WATCH_BACKOFF,
        })
    }

    /// Waits for the leader work to return ([`Event::Drained`]) after each term, before
    /// releasing the lock on a cancel and before contending again, so that no two terms' work
    /// runs at once in this process and the lock is released only once nothing acts under it
    /// (drain, then release).
    ///
    /// Renewals stop when the term ends, so the term's renew deadline passes while the work
    /// winds down. A work that has not returned by then, or within half the safety margin
    /// (`lease_duration − renew_deadline`) of being told to stop if that is later, is reported
    /// once with [`Action::WorkOverran`]. The lock is still not released while it runs: it
    /// expires for the others a lease duration after they saw the last renewal, as if this
    /// process had died.
    #[must_use]
    pub fn with_drain(mut self, on: bool) -> Self {
        self.drain = on;
        self
    }

    /// Whether the work of the last term is still running ([`with_drain`](Self::with_drain)).
    pub fn draining(&self) -> bool {
        self.draining.is_some()
    }

    /// Remembers that the work of `term` must return (with [`with_drain`](Self::with_drain)).
    fn begin_drain(&mut self, term: &Term) {
        if self.drain {
            let (now, _) = self.last_clock;
            let grace = (self.timing.lease_duration - self.timing.renew_deadline) / 2;
            self.draining = Some(Draining {
                token: term.token,
                overrun_at: (term.last_ok_sent + self.timing.renew_deadline).max(now + grace),
                overran: false,
            });
        }
    }

    /// Reports, once, a work that has not returned in time.
    fn check_drain(&mut self, now: Tick, out: &mut Vec<Action>) {
        let Some(d) = self.draining.as_mut() else {
            return;
        };
        if d.overran || now < d.overrun_at {
            return;
        }
        d.overran = true;
        out.push(Action::WorkOverran { token: d.token });
    }

    /// Measures a holder's expiry from the `renewTime` written in its record (plus its lease
    /// duration) on this host's wall clock, instead of from when this candidate observed the
    /// record. This is Go's `LeaseLocker` with `UseObservedTime = false` and what client-go did before 1.14.
    ///
    /// # Safety of the election
    /// Unsafe under clock skew: a candidate whose clock runs ahead of the holder's by more than
    /// `lease − renew deadline` takes over while the holder still leads. Leave it off unless
    /// every host's clock is tightly synchronised and the faster takeover after a restart (no
    /// need to observe a lease first) matters.
    #[must_use]
    pub fn with_record_time_expiry(mut self, on: bool) -> Self {
        self.record_time_expiry = on;
        self
    }

    /// The tick at which the record `r`, observed since `since`, expires.
    fn expires_at(&self, r: &LeaderRecord, since: Tick) -> Tick {
        if !self.record_time_expiry {
            return since + r.lease_duration();
        }
        let Some(renewed) = r.renew_time else {
            return Duration::ZERO;
        };
        let (tick, wall) = self.last_clock;
        let lease = jiff::SignedDuration::try_from(r.lease_duration()).unwrap_or_default();
        let until = renewed.checked_add(lease).unwrap_or(renewed);
        match Duration::try_from(until.duration_since(wall)) {
            Ok(ahead) => tick + ahead,
            Err(_) => {
                let behind = Duration::try_from(wall.duration_since(until)).unwrap_or_default();
                tick.saturating_sub(behind)
            }
        }
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The timing in force.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// What this candidate knows now.
    pub fn status(&self) -> Status {
        let mut status = Status::default();
        self.update_status(&mut status);
        status
    }

    /// Brings `status` up to date with what this candidate knows (all but `last_error`, which
    /// the driver owns), and says whether anything changed.
    ///
    /// A driver publishes a status after every event, and a leader's record changes with every
    /// renewal; updating in place copies only what changed and reuses the strings' buffers,
    /// where building a new [`Status`] cloned the holder twice per event.
    pub fn update_status(&self, status: &mut Status) -> bool {
        let (role, fencing_token) = match &self.state {
            State::Leading(t) => (Role::Leader, Some(t.token)),
            State::Finished => (Role::Stopped, None),
            _ => (Role::Standby, None),
        };
        let record = self.seen.as_ref().and_then(|s| s.record.as_ref());
        let holder = record.map_or("", |r| r.holder_identity.as_str());
        let mut changed = false;
        if (status.role, status.fencing_token, status.observed)
            != (role, fencing_token, self.seen.is_some())
        {
            (status.role, status.fencing_token, status.observed) =
                (role, fencing_token, self.seen.is_some());
            changed = true;
        }
        if status.leader != holder {
            status.leader.clear();
            status.leader.push_str(holder);
            changed = true;
        }
        match (&mut status.record, record) {
            (Some(have), Some(r)) if have == r => {}
            (Some(have), Some(r)) => {
                have.holder_identity.clone_from(&r.holder_identity);
                (
                    have.lease_duration_seconds,
                    have.acquire_time,
                    have.renew_time,
                    have.leader_transitions,
                ) = (
                    r.lease_duration_seconds,
                    r.acquire_time,
                    r.renew_time,
                    r.leader_transitions,
                );
                changed = true;
            }
            (None, None) => {}
            (have, r) => {
                *have = r.cloned();
                changed = true;
            }
        }
        changed
    }

    /// Whether the lock has been observed at least once (cheap; [`status`](Self::status) clones
    /// the record).
    pub fn observed(&self) -> bool {
        self.seen.is_some()
    }

    /// The version of the lock object as last observed (the point to watch from).
    pub fn version(&self) -> Option<Version> {
        self.seen.as_ref().and_then(|s| s.version.clone())
    }

    /// While leading: the time at which this candidate steps down unless a renewal succeeds
    /// first (send time of the last successful renewal + renew deadline).
    pub fn leading_until(&self) -> Option<Tick> {
        match &self.state {
            State::Leading(t) => Some(t.last_ok_sent + self.timing.renew_deadline),
            _ => None,
        }
    }

    /// The `leaderTransitions` this candidate's term writes, while it leads. The same as the
    /// fencing token's number unless the backend's versions are revisions
    /// ([`Version::with_revision`]).
    pub fn leading_transitions(&self) -> Option<i32> {
        match &self.state {
            State::Leading(t) => Some(t.transitions),
            _ => None,
        }
    }

    /// Whether this candidate leads.
    pub fn is_leader(&self) -> bool {
        matches!(self.state, State::Leading(_))
    }

    /// Whether this candidate stands by: neither leading, nor releasing after a cancel, nor
    /// finished. Only a standby needs to watch the lock.
    pub fn is_standby(&self) -> bool {
        matches!(self.state, State::Standby)
    }

    /// Whether an acquisition (create, or update of a released or expired record) is in
    /// flight. A driver need not watch meanwhile: the answer decides what comes next.
    pub fn acquiring(&self) -> bool {
        matches!(self.inflight, Some(Inflight::Acquire { .. }))
    }

    /// The next time the driver must deliver [`Event::Timer`], if any.
    pub fn deadline(&self) -> Option<Tick> {
        let drain_at = self.draining.filter(|d| !d.overran).map(|d| d.overrun_at);
        let watch_at = self
            .watch_retry_at
            .filter(|_| !self.watching && self.wants_watch());
        [self.deadline_of_state(), drain_at, watch_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// Whether this candidate needs a watch: a standby that has observed the lock, with no
    /// acquisition in flight.
    ///
    /// A leader needs none: it learns the lock's state from its own renewals (a conflict means
    /// someone else wrote), so a process leading M elections holds no watch streams at all.
    /// Nor does a candidate that is releasing: it is about to finish, and a watch opened beside
    /// the release would be one more request, and one more event to send, for the API server
    /// in the middle of the handover. Nor does a candidate whose acquisition is in flight:
    /// opening M watches while M acquisitions wait would fill the connection's streams (HTTP/2
    /// allows 250 by default) with requests that never end, and the answer decides what comes
    /// next.
    fn wants_watch(&self) -> bool {
        self.observed() && self.is_standby() && !self.acquiring()
    }

    /// Opens or closes the watch as [`wants_watch`](Self::wants_watch) says.
    fn drive_watch(&mut self, now: Tick, out: &mut Vec<Action>) {
        if !self.wants_watch() {
            if self.watching {
                self.watching = false;
                out.push(Action::Unwatch);
            }
            return;
        }
        if self.watching || self.watch_retry_at.is_some_and(|at| now < at) {
            return;
        }
        self.watch_retry_at = None;
        self.watching = true;
        out.push(Action::Watch {
            from: self.version(),
        });
    }

    fn deadline_of_state(&self) -> Option<Tick> {
        let idle = self.inflight.is_none();
        match &self.state {
            State::Finished => None,
            State::Leading(t) => {
                let step_down = t.last_ok_sent + self.timing.renew_deadline;
                Some(if idle {
                    t.renew_at.min(step_down)
                } else {
                    step_down
                })
            }
            State::Releasing {
                retry_at, give_up, ..
            } => Some(if idle {
                (*retry_at).min(*give_up)
            } else {
                *give_up
            }),
            State::Standby if !idle => None,
            State::Standby => {
                if let Some(at) = self.retry_at {
                    return Some(at);
                }
                let seen = self.seen.as_ref()?;
                let read_at = self.last_heard + self.read_interval();
                if self.draining.is_some() {
                    // No acquisition before the work returns: only the periodic read is due.
                    return Some(read_at);
                }
                if let Some(until) = self.hold_off_until {
                    // Sitting out after a step-down: look again when it ends.
                    return Some(read_at.min(until));
                }
                match &seen.record {
                    Some(r) if !r.is_released() => {
                        Some(read_at.min(self.expires_at(r, seen.since)))
                    }
                    Some(r) if r.prefers_other_than(&self.identity).is_some() => {
                        Some(read_at.min(seen.since + self.timing.lease_duration))
                    }
                    None if seen.unreadable => {
                        Some(read_at.min(seen.since + self.unreadable_wait()))
                    }
                    _ => Some(read_at),
                }
            }
        }
    }

    /// How late [`Event::Timer`] may arrive after [`deadline`](Self::deadline) without harm.
    ///
    /// Zero except before an idle leader's routine renewal (not a retry), which may wait a
    /// little: up to 1/64 of the renew interval, at most 200 ms, at most a quarter of the time
    /// left before the step-down, and never past the end of the renewal's jitter window. A
    /// renewal is therefore never later than jitter alone could make it, and the retries that
    /// fit before the step-down after a failed renewal are the same as without slack. A driver
    /// running many elections uses it to wake once for several renewals (see the elector),
    /// which is most of a renewal's cost at thousands of elections per process. A step-down is
    /// never late.
    pub fn timer_slack(&self) -> Duration {
        const MAX: Duration = Duration::from_millis(200);
        let State::Leading(t) = &self.state else {
            return Duration::ZERO;
        };
        let Some(until) = t.routine_until.filter(|_| self.inflight.is_none()) else {
            return Duration::ZERO;
        };
        let step_down = t.last_ok_sent + self.timing.renew_deadline;
        let room = step_down.saturating_sub(t.renew_at);
        let window = until.saturating_sub(t.renew_at);
        (self.timing.renew_interval() / 64)
            .min(MAX)
            .min(room / 4)
            .min(window)
    }

    /// Feeds one event at monotonic time `now` and wall-clock time `wall` (written into the
    /// record's timestamps only), and returns what to do.
    pub fn handle(&mut self, event: Event, now: Tick, wall: Timestamp) -> Vec<Action> {
        let mut out = Vec::new();
        if matches!(self.state, State::Finished) {
            return out;
        }
        // MicroTime: the finest precision any backend stores.
        let wall = Timestamp::from_microsecond(wall.as_microsecond()).unwrap_or(wall);
        self.last_clock = (now, wall);
        if self.hold_off_until.is_some_and(|at| now >= at) {
            self.hold_off_until = None;
        }
        match event {
            Event::Start => {}
            Event::Timer => {}
            Event::WatchLost => {
                // A leader learns from its own writes; a standby reads again at once.
                if !self.is_leader() {
                    self.stale = true;
                }
                if self.watching {
                    self.watching = false;
                    self.watch_retry_at = Some(now + self.watch_backoff);
                    self.watch_backoff = (self.watch_backoff * 2).min(self.timing.retry_period);
                }
            }
            Event::Cancel => self.on_cancel(now, &mut out),
            Event::StepDown { hold_off } => self.on_step_down_request(hold_off, now, &mut out),
            Event::Resume => self.hold_off_until = None,
            Event::Transfer { to } => {
                if self.is_leader() && !to.is_empty() && to != self.identity && !self.cancelling {
                    self.handing_to = Some(to.clone());
                    // The old leader keeps out while the target takes over, or the lease expires.
                    self.release_to(
                        StepDown::Transferred { to },
                        self.timing.lease_duration,
                        now,
                        &mut out,
                    );
                }
            }
            Event::Drained => {
                self.draining = None;
                if let State::Releasing { retry_at, .. } = &mut self.state {
                    *retry_at = (*retry_at).min(now);
                }
            }
            Event::Watched(v) => {
                self.watch_backoff = WATCH_BACKOFF;
                self.last_heard = now;
                self.on_observed(v, now, false, &mut out);
            }
            Event::ReadDone(result) => {
                if matches!(self.inflight, Some(Inflight::Read)) {
                    self.inflight = None;
                    self.note_latency(now);
                }
                match result {
                    Ok(v) => {
                        let silent_for = now.saturating_sub(self.last_heard);
                        let changed = v.as_ref().map(|v| &v.version) != self.version().as_ref();
                        if self.watching
                            && self.is_standby()
                            && changed
                            && !self.stale
                            && silent_for >= self.silence_limit()
                        {
                            // The watch missed a change: replace it (drive_watch opens the new
                            // one from the version just read).
                            self.watching = false;
                            out.push(Action::WatchStale { silent_for });
                            out.push(Action::Unwatch);
                        }
                        self.last_heard = now;
                        self.stale = false;
                        self.on_observed(v, now, true, &mut out);
                    }
                    Err(_) => self.on_error(now),
                }
            }
            Event::WriteDone(result) => self.on_write_done(result, now, &mut out),
            Event::Unreadable { version, from_read } => {
                if from_read && matches!(self.inflight, Some(Inflight::Read)) {
                    self.inflight = None;
                    self.stale = false;
                }
                self.last_heard = now;
                self.on_unreadable(version, now, &mut out);
            }
        }
        self.check_step_down(now, &mut out);
        self.check_drain(now, &mut out);
        if self.inflight.is_none() {
            self.inflight_sent = None;
        }
        self.drive(now, wall, &mut out);
        if self.inflight.is_some() && self.inflight_sent.is_none() {
            self.inflight_sent = Some(now);
        }
        self.drive_watch(now, &mut out);
        out
    }

    /// Notes how long the request in flight took, answered at `now`.
    fn note_latency(&mut self, now: Tick) {
        if let Some(sent) = self.inflight_sent.take() {
            self.latencies[self.latency_next % LATENCIES] = now.saturating_sub(sent);
            self.latency_next = self.latency_next.wrapping_add(1);
        }
    }

    /// When the routine renewal after a success at `now` (sent at `sent_at`) is due, and the
    /// end of its jitter window (renew interval × [1, [`JITTER_FACTOR`](crate::config::JITTER_FACTOR))).
    ///
    /// Never later than a request timeout before the step-down: with a retry period close to
    /// the renew deadline (15 s / 10 s / 8 s is valid) and a slow answer, jitter would
    /// otherwise put the renewal past the step-down, and a healthy leader would step down
    /// without having tried.
    fn routine_renewal(&mut self, now: Tick, sent_at: Tick) -> (Tick, Tick) {
        let interval = self.timing.renew_interval();
        let latest = (sent_at + self.timing.renew_deadline)
            .saturating_sub(self.request_timeout())
            .max(now);
        (
            (now + self.jittered(interval)).min(latest),
            (now + interval.mul_f64(crate::config::JITTER_FACTOR)).min(latest),
        )
    }

    fn jittered(&mut self, d: Duration) -> Duration {
        // splitmix64: deterministic for a seed, no I/O.
        self.rng = self.rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.rng;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
        let unit = (z >> 11) as f64 / (1u64 << 53) as f64;
        d.mul_f64(1.0 + (crate::config::JITTER_FACTOR - 1.0) * unit)
    }

    /// A quarter of the renew deadline: a renewal sent at half the renew deadline that hangs
    /// is abandoned in time for a retry before the step-down. The schedule of renewals and
    /// retries is planned with it.
    fn request_timeout(&self) -> Duration {
        (self.timing.renew_deadline / 4).max(Duration::from_millis(100))
    }

    /// How long a request may take before it is abandoned: [`request_timeout`]
    /// (Self::request_timeout), or four times the slowest of the last [`LATENCIES`] requests
    /// (a timed-out one counts as long as it was given), up to half the renew deadline.
    ///
    /// On a network whose round trip exceeds the base timeout (300 ms each way against 500 ms
    /// with a 2 s renew deadline), no request could ever succeed, and no candidate could lead
    /// until the network recovered. After one timeout the next attempt gets twice as long.
    fn request_budget(&self) -> Duration {
        let base = self.request_timeout();
        let slowest = self.latencies.iter().copied().max().unwrap_or_default();
        base.max(slowest * 4)
            .min((self.timing.renew_deadline / 2).max(base))
    }

    /// Whether `r` is one of this candidate's recent writes. Times are compared at whole
    /// seconds: backends store them at microseconds (Lease, file) or seconds (annotations).
    fn is_own(&self, r: &LeaderRecord) -> bool {
        self.own_writes.iter().any(|w| alike_at_seconds(w, r))
    }

    /// Whether `r` is this candidate's latest write.
    fn is_latest_own(&self, r: &LeaderRecord) -> bool {
        let secs = |t: &Option<Timestamp>| t.map(|t| t.as_second());
        self.own_writes.back().is_some_and(|w| {
            w.holder_identity == r.holder_identity
                && w.leader_transitions == r.leader_transitions
                && secs(&w.renew_time) == secs(&r.renew_time)
        })
    }

    fn remember_write(&mut self, r: LeaderRecord) {
        if self.own_writes.len() == OWN_WRITES {
            self.own_writes.pop_front();
        }
        self.own_writes.push_back(r);
    }

    /// Forgets the latest remembered write equal to `r` (one that is known not to have landed).
    fn forget_write(&mut self, r: &LeaderRecord) {
        if let Some(i) = self.own_writes.iter().rposition(|w| w == r) {
            self.own_writes.remove(i);
        }
    }

    fn set_seen(&mut self, v: Option<Versioned>, now: Tick, out: &mut Vec<Action>) {
        let (record, version, key) = match v {
            Some(v) => (Some(v.record), Some(v.version), v.change_key),
            None => (None, None, None),
        };
        if let Some(r) = &record {
            // A record under our name that we did not write, and that differs from the one seen
            // before: someone else is renewing as us.
            let changed = self
                .seen
                .as_ref()
                .is_some_and(|s| s.record.as_ref() != Some(r));
            // A handover to this candidate is no twin's write.
            if r.holder_identity == self.identity
                && !self.is_own(r)
                && r.handover_from.is_none()
                && changed
            {
                let due = self
                    .duplicate_reported_at
                    .is_none_or(|at| now >= at + self.timing.lease_duration);
                if due {
                    self.duplicate_reported_at = Some(now);
                    out.push(Action::DuplicateIdentity { record: r.clone() });
                }
            }
            self.max_transitions = Some(
                self.max_transitions
                    .map_or(r.leader_transitions, |m| m.max(r.leader_transitions)),
            );
            self.deleted_lease = None;
            if !r.is_released() {
                self.last_holder_lease = Some(r.lease_duration());
            }
        } else if let Some(Some(prev)) = self.seen.as_ref().map(|s| s.record.as_ref()) {
            // Deleted while held: whoever held it may still be acting until its lease runs out
            // (by our observation), so the deletion is treated like an unchanged record.
            if !prev.is_released() {
                self.deleted_lease = Some(prev.lease_duration());
            }
        }
        // Any change counts, of the record or of what else the backend says it summarises.
        let since = match &self.seen {
            Some(s) if s.record == record && s.key == key && !s.unreadable => s.since,
            _ => now,
        };
        self.seen = Some(Seen {
            record,
            version,
            key,
            unreadable: false,
            since,
        });
        self.report_leader(out);
    }

    fn report_leader(&mut self, out: &mut Vec<Action>) {
        let holder = self
            .seen
            .as_ref()
            .and_then(|s| s.record.as_ref())
            .map_or("", |r| r.holder_identity.as_str());
        // Fired once per change of holder; a lock that is absent or released at start is not a
        // change. Compared borrowed: this runs on every observation, and changes are rare.
        if self.reported_leader.as_deref() != Some(holder)
            && (self.reported_leader.is_some() || !holder.is_empty())
        {
            let holder = holder.to_owned();
            self.reported_leader = Some(holder.clone());
            out.push(Action::NewLeader { identity: holder });
        }
    }

    fn on_observed(
        &mut self,
        v: Option<Versioned>,
        now: Tick,
        from_read: bool,
        out: &mut Vec<Action>,
    ) {
        let own = v.as_ref().is_some_and(|obs| self.is_own(&obs.record));
        // Our own record, but with a preferred holder someone else named (the Coordinated
        // Leader Election controller patches `spec.preferredHolder`): end the term, release.
        let preferred = match (&self.state, &v) {
            (State::Leading(_), Some(obs)) if own => obs
                .record
                .prefers_other_than(&self.identity)
                .map(|p| (p.to_owned(), v.clone())),
            _ => None,
        };
        let latest = v
            .as_ref()
            .is_some_and(|obs| self.is_latest_own(&obs.record));
        let same_record = match (&v, self.seen.as_ref().and_then(|s| s.record.as_ref())) {
            (Some(obs), Some(r)) => obs.record == *r,
            _ => false,
        };
        match &mut self.state {
            State::Leading(term)
                if !from_read
                    && v.as_ref()
                        .is_some_and(|obs| obs.record.leader_transitions < term.transitions) =>
            {
                // A watch restarted from an older version replays states from before this
                // term: they say nothing about the present.
            }
            State::Leading(term) => {
                if let (true, Some(obs)) = (own || same_record, &v) {
                    // Our own write coming back, or another field of the object changed. Adopt
                    // the version only for the latest write (a watch event may trail a newer
                    // write response); after a conflict, renew at once on the version read.
                    if (latest || from_read || same_record)
                        && let Some(seen) = &mut self.seen
                    {
                        seen.version = Some(obs.version.clone());
                    }
                    if from_read {
                        term.renew_at = now;
                        term.routine_until = None;
                    }
                } else {
                    let reason = match &v {
                        None => StepDown::Deleted,
                        Some(obs) if obs.record.holder_identity == self.identity => {
                            StepDown::DuplicateIdentity
                        }
                        Some(obs) => StepDown::Lost {
                            holder: obs.record.holder_identity.clone(),
                        },
                    };
                    self.step_down(reason, out);
                    self.set_seen(v, now, out);
                }
            }
            State::Releasing { .. } => {
                self.set_seen(v, now, out);
                if !own {
                    // Someone else wrote, or it is released or deleted: nothing left to release.
                    self.released(out);
                }
            }
            State::Standby | State::Finished => self.set_seen(v, now, out),
        }
        if let Some((holder, v)) = preferred.filter(|_| self.is_leader()) {
            self.set_seen(v, now, out);
            self.release_to(StepDown::Preferred { holder }, Duration::ZERO, now, out);
        }
    }

    fn on_unreadable(&mut self, version: Version, now: Tick, out: &mut Vec<Action>) {
        match &self.state {
            State::Leading(_) => self.step_down(StepDown::Unreadable, out),
            State::Releasing { .. } => self.released(out),
            _ => {}
        }
        let since = match &self.seen {
            Some(s) if s.unreadable && s.version.as_ref() == Some(&version) => s.since,
            _ => now,
        };
        self.deleted_lease = None;
        self.seen = Some(Seen {
            record: None,
            version: Some(version),
            key: None,
            unreadable: true,
            since,
        });
        self.report_leader(out);
    }

    fn on_error(&mut self, now: Tick) {
        self.stale = true;
        let delay = self.jittered(self.timing.retry_period);
        let last_try = self.request_timeout();
        let retry = self.timing.retry_period;
        match &mut self.state {
            State::Leading(term) => {
                let step_down = term.last_ok_sent + self.timing.renew_deadline;
                let (at, early) =
                    leader_retry_at(now, step_down, retry, last_try, term.early_try_made);
                term.renew_at = at;
                term.early_try_made |= early;
                term.routine_until = None;
            }
            State::Releasing { retry_at, .. } => {
                *retry_at = now + self.timing.retry_period.min(Duration::from_millis(200));
            }
            _ => self.retry_at = Some(now + delay),
        }
    }

    fn on_write_done(
        &mut self,
        result: Result<Version, ErrorKind>,
        now: Tick,
        out: &mut Vec<Action>,
    ) {
        let op = match self.inflight.take() {
            Some(Inflight::Read) => {
                // A write result while a read is in flight cannot be ours: ignore it.
                self.inflight = Some(Inflight::Read);
                return;
            }
            None => return,
            Some(op) => op,
        };
        self.note_latency(now);
        let version = match result {
            Ok(version) => version,
            Err(ErrorKind::Conflict) => {
                // A conflict means the write did not land: forget it, or a record that someone
                // under the same identity wrote in the same second would pass for ours (times
                // compare at whole seconds) and be resumed as this candidate's own.
                if let Inflight::Acquire { record, .. } | Inflight::Renew { record, .. } = &op {
                    self.forget_write(record);
                }
                // Read again and decide again.
                self.stale = true;
                if matches!(op, Inflight::Acquire { .. }) {
                    self.conflicted_at = self.seen.as_ref().and_then(|s| s.version.clone());
                }
                match &mut self.state {
                    State::Leading(term) => {
                        term.renew_at = now;
                        term.routine_until = None;
                    }
                    State::Releasing { retry_at, .. } => *retry_at = now,
                    _ => {}
                }
                return;
            }
            Err(kind) => {
                // It may have landed: observers may have seen it.
                if let (Inflight::Renew { sent_at, record }, State::Leading(term)) =
                    (&op, &mut self.state)
                {
                    Self::credit(&self.timing, term, *sent_at, record);
                }
                if kind != ErrorKind::Partial {
                    return self.on_error(now);
                }
                // Part of it was refused as a conflict: someone else wrote. Read again and
                // decide again at once, as after a conflict, but keep the write as our own.
                self.stale = true;
                match &mut self.state {
                    State::Leading(term) => {
                        term.renew_at = now;
                        term.routine_until = None;
                    }
                    State::Releasing { retry_at, .. } => *retry_at = now,
                    _ => {}
                }
                return;
            }
        };
        self.stale = false;
        self.conflicted_at = None;
        match op {
            Inflight::Read => {}
            Inflight::Release { record } => {
                self.set_seen(Some(Versioned::new(record, version)), now, out);
                self.released(out);
            }
            Inflight::Renew { sent_at, record } => {
                let credited = match &mut self.state {
                    State::Leading(term) => Self::credit(&self.timing, term, sent_at, &record),
                    _ => sent_at,
                };
                self.set_seen(Some(Versioned::new(record, version)), now, out);
                let (next, until) = self.routine_renewal(now, credited);
                if let State::Leading(term) = &mut self.state {
                    term.last_ok_sent = term.last_ok_sent.max(credited);
                    term.renew_at = next;
                    term.routine_until = Some(until);
                    term.early_try_made = false;
                }
            }
            Inflight::Acquire { sent_at, record } => {
                let (renew_at, until) = self.routine_renewal(now, sent_at);
                let term = Term {
                    // The revision of the write that began the term where the store has
                    // revisions: larger than every earlier write's, whoever wrote the lock
                    // since, even if it was deleted and created again.
                    token: version
                        .revision()
                        .map_or_else(|| record.fencing_token(), FencingToken),
                    transitions: record.leader_transitions,
                    acquire_time: record.acquire_time,
                    last_ok_sent: sent_at,
                    renew_at,
                    routine_until: Some(until),
                    early_try_made: false,
                    landed: Some((sent_at, record.clone())),
                };
                self.retry_at = None;
                self.set_seen(Some(Versioned::new(record, version)), now, out);
                if self.cancelling || self.holding_off(now) {
                    // Acquired, but shutdown or a step-down was requested meanwhile: never
                    // start; release.
                    self.begin_release(term, now, out);
                } else if now >= sent_at + self.timing.renew_deadline {
                    // The answer came too late to act on; the next read decides.
                    self.stale = true;
                } else {
                    let token = term.token;
                    self.state = State::Leading(term);
                    out.push(Action::StartedLeading { token });
                }
            }
        }
    }

    fn on_cancel(&mut self, now: Tick, out: &mut Vec<Action>) {
        self.cancelling = true;
        match std::mem::replace(&mut self.state, State::Standby) {
            State::Leading(term) => {
                out.push(Action::StoppedLeading {
                    token: term.token,
                    reason: StepDown::Cancelled,
                });
                self.begin_drain(&term);
                self.begin_release(term, now, out);
            }
            other => self.state = other,
        }
        if matches!(self.state, State::Standby) {
            match self.inflight {
                // An acquisition may land: wait for its outcome.
                Some(Inflight::Acquire { .. }) => {}
                _ => {
                    if self.inflight.take().is_some() {
                        out.push(Action::Abandon);
                    }
                    self.finish(out);
                }
            }
        }
    }

    /// A leader's step-down on request: as a shutdown's, but the candidate stays.
    fn on_step_down_request(&mut self, hold_off: Duration, now: Tick, out: &mut Vec<Action>) {
        if self.cancelling {
            return;
        }
        self.release_to(StepDown::Requested, hold_off, now, out);
    }

    /// Ends a leader's term for `reason`, drains, releases, and stays a standby that does not
    /// acquire before `hold_off` has passed.
    fn release_to(
        &mut self,
        reason: StepDown,
        hold_off: Duration,
        now: Tick,
        out: &mut Vec<Action>,
    ) {
        self.hold_off_until = Some(now + hold_off);
        if let State::Leading(term) = std::mem::replace(&mut self.state, State::Standby) {
            out.push(Action::StoppedLeading {
                token: term.token,
                reason,
            });
            // A renewal in flight is left to land; the release follows it (the machine sends
            // one request at a time), and its version is then the one released.
            self.begin_drain(&term);
            self.begin_release(term, now, out);
        }
    }

    /// Whether a step-down's hold-off keeps this candidate from acquiring at `now`.
    fn holding_off(&self, now: Tick) -> bool {
        self.hold_off_until.is_some_and(|at| now < at)
    }

    /// The release has ended (written, found unnecessary, or given up on): finish after a
    /// shutdown, or stay a standby after a step-down.
    fn released(&mut self, out: &mut Vec<Action>) {
        self.handing_to = None;
        if self.cancelling {
            self.finish(out);
        } else {
            self.state = State::Standby;
        }
    }

    fn begin_release(&mut self, term: Term, now: Tick, out: &mut Vec<Action>) {
        // A step-down releases whatever the configuration says: handing over at once is the
        // point of it.
        if !self.timing.release_on_cancel && self.cancelling {
            self.finish(out);
            return;
        }
        let give_up = term.last_ok_sent + self.timing.lease_duration;
        // Drain, then release: while the work runs the record stays ours, unrenewed, and
        // expires as if this process had died if the work never returns.
        let retry_at = if self.draining.is_some() {
            give_up
        } else {
            now
        };
        self.state = State::Releasing {
            term,
            retry_at,
            give_up,
        };
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        if !matches!(self.state, State::Finished) {
            if self.inflight.take().is_some() {
                out.push(Action::Abandon);
            }
            self.state = State::Finished;
            out.push(Action::Finished);
        }
    }

    fn step_down(&mut self, reason: StepDown, out: &mut Vec<Action>) {
        if let State::Leading(term) = &self.state {
            out.push(Action::StoppedLeading {
                token: term.token,
                reason,
            });
            let term = term.clone();
            self.begin_drain(&term);
            self.state = State::Standby;
            self.stale = true;
            // A renewal in flight no longer matters; if it lands, its record is recognised as
            // our own write by the next read.
            if matches!(self.inflight, Some(Inflight::Renew { .. })) {
                self.inflight = None;
                out.push(Action::Abandon);
            }
        }
    }

    fn check_step_down(&mut self, now: Tick, out: &mut Vec<Action>) {
        match &self.state {
            State::Leading(term) if now >= term.last_ok_sent + self.timing.renew_deadline => {
                self.step_down(StepDown::DeadlineExceeded, out);
                if self.inflight.take().is_some() {
                    out.push(Action::Abandon);
                }
            }
            State::Releasing { give_up, .. } if now >= *give_up => self.released(out),
            _ => {}
        }
    }

    fn drive(&mut self, now: Tick, wall: Timestamp, out: &mut Vec<Action>) {
        if self.inflight.is_some() {
            return;
        }
        let timeout = self.request_budget();
        // Cloned only for a request: most calls find nothing due.
        let version = || self.seen.as_ref().and_then(|s| s.version.clone());
        match &self.state {
            State::Finished => {}
            State::Leading(term) => {
                if now < term.renew_at {
                    return;
                }
                let deadline = (now + timeout).min(term.last_ok_sent + self.timing.renew_deadline);
                match version() {
                    Some(version) if !self.stale => {
                        let record = LeaderRecord {
                            holder_identity: self.identity.clone(),
                            lease_duration_seconds: self.timing.lease_duration_seconds(),
                            acquire_time: term.acquire_time,
                            renew_time: Some(wall),
                            leader_transitions: term.transitions,
                            preferred_holder: None,
                            handover_from: None,
                        };
                        self.remember_write(record.clone());
                        self.inflight = Some(Inflight::Renew {
                            sent_at: now,
                            record: record.clone(),
                        });
                        out.push(Action::Update {
                            record,
                            version,
                            deadline,
                        });
                    }
                    _ => {
                        self.inflight = Some(Inflight::Read);
                        out.push(Action::Read { deadline });
                    }
                }
            }
            State::Releasing {
                term,
                retry_at,
                give_up,
            } => {
                if now < *retry_at {
                    return;
                }
                let deadline = (now + timeout).min(*give_up);
                match version() {
                    Some(version) if !self.stale => {
                        // A preferred holder stays named: the release hands over to it.
                        let preferred_holder = self
                            .seen
                            .as_ref()
                            .and_then(|s| s.record.as_ref())
                            .and_then(|r| r.preferred_holder.clone());
                        let handover = self.handing_to.clone().zip(term.transitions.checked_add(1));
                        let record = match handover {
                            // A transfer: held by the target from now, with the next token, so
                            // that no one else takes it before the target does.
                            Some((to, next)) => LeaderRecord {
                                holder_identity: to,
                                lease_duration_seconds: self.timing.lease_duration_seconds(),
                                acquire_time: Some(wall),
                                renew_time: Some(wall),
                                leader_transitions: next,
                                preferred_holder: None,
                                handover_from: Some(self.identity.clone()),
                            },
                            None => LeaderRecord {
                                holder_identity: String::new(),
                                lease_duration_seconds: 1,
                                acquire_time: Some(wall),
                                renew_time: Some(wall),
                                leader_transitions: term.transitions,
                                preferred_holder,
                                handover_from: None,
                            },
                        };
                        self.inflight = Some(Inflight::Release {
                            record: record.clone(),
                        });
                        out.push(Action::Update {
                            record,
                            version,
                            deadline,
                        });
                    }
                    _ => {
                        self.inflight = Some(Inflight::Read);
                        out.push(Action::Read { deadline });
                    }
                }
            }
            State::Standby => {
                if self.cancelling {
                    self.finish(out);
                    return;
                }
                if self.retry_at.is_some_and(|at| now < at) {
                    return;
                }
                self.retry_at = None;
                let deadline = now + timeout;
                if self.draining.is_some() {
                    // No acquisition before the last term's work has returned: two terms'
                    // work would run at once. Only keep the view of the lock fresh.
                    let read_due = self.stale
                        || self.seen.is_none()
                        || now >= self.last_heard + self.read_interval();
                    if read_due {
                        self.inflight = Some(Inflight::Read);
                        out.push(Action::Read { deadline });
                    }
                    return;
                }
                let Some(seen) = self.seen.as_ref().filter(|_| !self.stale) else {
                    self.inflight = Some(Inflight::Read);
                    out.push(Action::Read { deadline });
                    return;
                };
                if self.holding_off(now) {
                    // Sitting out after a step-down: keep the view of the lock fresh only.
                    if now >= self.last_heard + self.read_interval() {
                        self.inflight = Some(Inflight::Read);
                        out.push(Action::Read { deadline });
                    }
                    return;
                }
                // The token after the highest ever seen: a deleted or unreadable lock continues
                // from it, and so does a takeover of a lock that was deleted and re-created with
                // a smaller count (by a client-go candidate, say) since. The record's own count
                // is never above it: every record seen raised it.
                // After a negative count (annotations and files accept one), 1: every negative
                // count reads as token 0, which an earlier term may have had (one written by an
                // older leasehold, say), and counting up from it would repeat it.
                let after_max = self
                    .max_transitions
                    .map_or(Some(0), |m| m.max(0).checked_add(1));
                let read_due = now >= self.last_heard + self.read_interval();
                if let (true, Some(version)) = (seen.unreadable, seen.version.clone()) {
                    let unchanged_for = now.saturating_sub(seen.since);
                    if unchanged_for >= self.unreadable_wait() {
                        if self.backing_off(Some(&version), now) {
                            return;
                        }
                        if after_max.is_some() {
                            out.push(Action::ReplaceUnreadable {
                                version: version.clone(),
                                unchanged_for,
                            });
                        }
                        self.acquire(after_max, Some(version), now, deadline, wall, out);
                    } else if read_due {
                        self.inflight = Some(Inflight::Read);
                        out.push(Action::Read { deadline });
                    }
                    return;
                }
                match (&seen.record, &seen.version) {
                    (None, _) | (_, None) => {
                        if self.deleted_lease.is_none_or(|d| now >= seen.since + d) {
                            self.acquire(after_max, None, now, deadline, wall, out);
                        }
                    }
                    (Some(r), Some(version))
                        if r.holder_identity == self.identity
                            && r.handover_from
                                .as_deref()
                                .is_some_and(|f| f != self.identity)
                            && !self.is_own(r)
                            && now < self.expires_at(r, seen.since) =>
                    {
                        // Handed to this candidate by the last leader: take the term it marks,
                        // with the token it already carries, by compare-and-swap on it.
                        let (version, transitions) = (version.clone(), r.leader_transitions);
                        if self.backing_off(Some(&version), now) {
                            return;
                        }
                        self.acquire(Some(transitions), Some(version), now, deadline, wall, out);
                    }
                    (Some(r), Some(version)) => {
                        let own = r.holder_identity == self.identity && self.is_own(r);
                        let expired = now >= self.expires_at(r, seen.since);
                        // A lock that names another preferred holder is left to it for a
                        // lease duration from when this version was seen, released or not;
                        // then it is anyone's, so a preferred holder that never comes cannot
                        // keep the lock empty.
                        let deferring = r.prefers_other_than(&self.identity).is_some()
                            && now < seen.since + self.timing.lease_duration;
                        if (r.is_released() || own || expired) && !deferring {
                            let version = version.clone();
                            if self.backing_off(Some(&version), now) {
                                return;
                            }
                            self.acquire(after_max, Some(version), now, deadline, wall, out);
                        } else if read_due {
                            self.inflight = Some(Inflight::Read);
                            out.push(Action::Read { deadline });
                        }
                    }
                }
            }
        }
    }

    /// How long a standby may go without news of the lock before it reads it.
    ///
    /// A live holder renews every renew interval, and the watch delivers each renewal, so a
    /// watch silent for two renew intervals means the holder has stopped, or the watch has
    /// (a stream can hang without ending). A read then tells the two apart at the cost of one
    /// request per silence: without it, a standby with a stuck watch would learn of each
    /// renewal only at its once-per-lease read, and, counting expiry from when it learns, could
    /// wait up to two leases after a crash. Otherwise (no watch, or nothing held) once a lease.
    fn read_interval(&self) -> Duration {
        let held = self
            .seen
            .as_ref()
            .and_then(|s| s.record.as_ref())
            .is_some_and(|r| !r.is_released() && r.holder_identity != self.identity);
        if self.watching && held {
            self.silence_limit()
        } else {
            self.timing.lease_duration
        }
    }

    /// Two renew intervals, at most a lease duration: see [`read_interval`](Self::read_interval).
    fn silence_limit(&self) -> Duration {
        (self.timing.renew_interval() * 2).min(self.timing.lease_duration)
    }

    /// How long a record that cannot be read must stay unchanged before it is replaced: the
    /// longer of this candidate's lease and the last readable holder's, whose holder may still
    /// be renewing (and reading its own record back fine, if only this candidate's decoding
    /// fails) with its own lease.
    fn unreadable_wait(&self) -> Duration {
        self.timing
            .lease_duration
            .max(self.last_holder_lease.unwrap_or_default())
    }

    /// Whether an acquisition at `version` must wait: the last one at this very version was
    /// refused with a conflict, so the backend contradicts itself and trying again at once
    /// would loop at round-trip rate. Waits a retry period, then tries once more.
    fn backing_off(&mut self, version: Option<&Version>, now: Tick) -> bool {
        if version.is_none() || self.conflicted_at.as_ref() != version {
            return false;
        }
        self.conflicted_at = None;
        self.retry_at = Some(now + self.jittered(self.timing.retry_period));
        true
    }

    /// Notes that this term's write of `record`, sent at `sent_at`, landed or may have landed,
    /// and returns the send time the leader's step-down may count from.
    ///
    /// Observers that see times at whole seconds cannot tell two writes in the same second
    /// apart: for them the later one is no renewal, and their wait runs from when they saw the
    /// first. After an ambiguous failure (a timeout, or a 5xx answered after the write was
    /// applied) the retry can land within the same second. When the margin
    /// (`lease_duration - renew_deadline`) is under a second, that difference matters, so the
    /// leader then counts from the first write of such a run. With a second of margin or more
    /// it cannot: such observers are never more than a second behind.
    fn credit(timing: &Timing, term: &mut Term, sent_at: Tick, record: &LeaderRecord) -> Tick {
        let margin = timing.lease_duration.saturating_sub(timing.renew_deadline);
        let first = match &term.landed {
            Some((at, r)) if margin < Duration::from_secs(1) && alike_at_seconds(r, record) => {
                (*at).min(sent_at)
            }
            _ => sent_at,
        };
        term.landed = Some((first, record.clone()));
        first
    }

    /// Sends an acquisition writing `transitions` (the new term's token): an update at
    /// `version`, or a create when there is no object. With no token left (`leaderTransitions`
    /// at `i32::MAX`, so no larger one can be written) it waits a lease duration instead.
    fn acquire(
        &mut self,
        transitions: Option<i32>,
        version: Option<Version>,
        now: Tick,
        deadline: Tick,
        wall: Timestamp,
        out: &mut Vec<Action>,
    ) {
        let Some(transitions) = transitions else {
            self.retry_at = Some(now + self.timing.lease_duration);
            return;
        };
        let record = LeaderRecord {
            holder_identity: self.identity.clone(),
            lease_duration_seconds: self.timing.lease_duration_seconds(),
            acquire_time: Some(wall),
            renew_time: Some(wall),
            leader_transitions: transitions,
            // A new term clears it, as client-go's record does.
            preferred_holder: None,
            handover_from: None,
        };
        self.remember_write(record.clone());
        self.inflight = Some(Inflight::Acquire {
            sent_at: now,
            record: record.clone(),
        });
        out.push(match version {
            Some(version) => Action::Update {
                record,
                version,
                deadline,
            },
            None => Action::Create { record, deadline },
        });
    }
}

/// Whether two records read alike to an observer that sees times at whole seconds (client-go,
/// and every candidate on an annotation lock, which stores whole seconds).
fn alike_at_seconds(a: &LeaderRecord, b: &LeaderRecord) -> bool {
    let secs = |t: &Option<Timestamp>| t.map(|t| t.as_second());
    // Numbers first: they tell the remembered writes apart, the holder mostly does not.
    secs(&a.renew_time) == secs(&b.renew_time)
        && a.leader_transitions == b.leader_transitions
        && a.lease_duration_seconds == b.lease_duration_seconds
        && secs(&a.acquire_time) == secs(&b.acquire_time)
        && a.holder_identity == b.holder_identity
}

/// When a leader tries again after a failed renewal (or read) at `now`, stepping down at
/// `step_down`, and whether that is the early try.
///
/// A retry period later, as client-go does, when that still leaves a whole request timeout
/// (`timeout`) before the step-down. Otherwise, once per renewal cycle, an early try: a request
/// timeout before the step-down, or a quarter retry period after the failure if that is later.
/// After it, retries go on a retry period apart, until the step-down. So a failing API server
/// gets at most one request cycle (a read and an update) more than client-go's schedule would
/// send, and with any retry period up to half the renew deadline (and a renew deadline of at
/// least 400 ms, so the request timeout is a quarter of it) a failed renewal, even one that
/// hung for its whole request timeout, is always tried again before the step-down.
///
/// Without it, a retry period of half the renew deadline (60 s / 40 s / 20 s, the durations of
/// node-lease-like fleets) left no retry at all: the routine renewal goes out 20–24 s after the
/// last success, and a retry 20 s after it failed is past the 40 s step-down, so one 500 handed
/// the election over. Trying earlier is always safe: the step-down stays a renew deadline after
/// the last successful send, and a try's deadline never passes it.
fn leader_retry_at(
    now: Tick,
    step_down: Tick,
    retry_period: Duration,
    timeout: Duration,
    early_try_made: bool,
) -> (Tick, bool) {
    let regular = now + retry_period;
    if early_try_made || regular + timeout <= step_down {
        // At or past the step-down, the step-down comes first: `Machine::deadline` is the
        // earlier of the two.
        return (regular, false);
    }
    let early = step_down
        .saturating_sub(timeout)
        .max(now + retry_period / 4)
        .min(regular);
    (early, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);
    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }
    fn wall() -> Timestamp {
        "2030-01-01T00:00:00Z".parse().unwrap()
    }
    fn timing() -> Timing {
        Timing::default() // 15 s / 10 s / 2 s
    }
    fn machine() -> Machine {
        Machine::new("me", timing(), 7).unwrap()
    }
    fn ver(s: &str) -> Version {
        Version::new(s)
    }
    fn other(holder: &str, transitions: i32, hours_off: i64) -> LeaderRecord {
        // Timestamps far from our clock: they must not matter.
        let t = wall()
            .checked_add(jiff::SignedDuration::from_hours(hours_off))
            .unwrap();
        LeaderRecord {
            holder_identity: holder.into(),
            lease_duration_seconds: 15,
            acquire_time: Some(t),
            renew_time: Some(t),
            leader_transitions: transitions,
            preferred_holder: None,
            handover_from: None,
        }
    }
    fn seen(record: LeaderRecord, v: &str) -> Option<Versioned> {
        Some(Versioned::new(record, ver(v)))
    }
    /// The read a standby makes when its watch has been silent for two renew intervals (10 s
    /// here), at its deadline: it finds `v` unchanged, which leaves the expiry where it was.
    fn quiet_read(m: &mut Machine, v: Option<Versioned>) {
        let at = m.deadline().unwrap();
        let a = m.handle(Event::Timer, at, wall());
        assert!(
            matches!(a.as_slice(), [Action::Read { .. }]),
            "a read at {at:?}: {a:?}"
        );
        let a = m.handle(Event::ReadDone(Ok(v)), at, wall());
        assert!(a.is_empty(), "{a:?}");
    }

    /// A fresh machine that reads `record` (version "1") at t=0; returns it and its actions.
    fn observing(record: LeaderRecord) -> (Machine, Vec<Action>) {
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        let a = m.handle(
            Event::ReadDone(Ok(seen(record, "1"))),
            Duration::ZERO,
            wall(),
        );
        (m, a)
    }
    /// Drives a fresh machine to leadership at t=0 on an absent lock; returns it.
    fn leader() -> Machine {
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
        let a = m.handle(Event::WriteDone(Ok(ver("1"))), Duration::ZERO, wall());
        assert!(
            a.contains(&Action::StartedLeading {
                token: FencingToken(0)
            }),
            "{a:?}"
        );
        m
    }

    /// Where versions are store revisions, a term's token is the revision of the write that
    /// began it, not the count it wrote: the count of a lock re-created while no candidate ran
    /// starts again, and revisions do not.
    #[test]
    fn the_token_is_the_revision_of_the_write_that_began_the_term() {
        let held = other("x", 7, 0);
        let (mut m, _) = observing(held.clone());
        // Unchanged reads until the lease has run out, then the takeover.
        let (at, record) = loop {
            let at = m.deadline().unwrap();
            let a = m.handle(Event::Timer, at, wall());
            match a.as_slice() {
                [Action::Read { .. }] => {
                    m.handle(Event::ReadDone(Ok(seen(held.clone(), "1"))), at, wall());
                }
                [Action::Update { record, .. }, Action::Unwatch] => break (at, record.clone()),
                a => panic!("{a:?}"),
            }
        };
        assert_eq!(record.leader_transitions, 8, "client-go's count goes on");
        let a = m.handle(
            Event::WriteDone(Ok(Version::new("4711").with_revision(4711))),
            at,
            wall(),
        );
        assert_eq!(
            a.iter()
                .find(|a| matches!(a, Action::StartedLeading { .. }))
                .cloned(),
            Some(Action::StartedLeading {
                token: FencingToken(4711)
            })
        );
        assert_eq!(m.leading_transitions(), Some(8));
        assert_eq!(m.status().fencing_token, Some(FencingToken(4711)));
    }

    #[test]
    fn creates_an_absent_lock_and_leads() {
        let mut m = machine();
        assert_eq!(
            m.handle(Event::Start, Duration::ZERO, wall()),
            vec![Action::Read { deadline: ms(2500) }],
            "a request may take a quarter of the renew deadline"
        );
        let a = m.handle(Event::ReadDone(Ok(None)), ms(3), wall());
        let expected = LeaderRecord {
            holder_identity: "me".into(),
            lease_duration_seconds: 15,
            acquire_time: Some(wall()),
            renew_time: Some(wall()),
            leader_transitions: 0,
            preferred_holder: None,
            handover_from: None,
        };
        assert_eq!(
            a,
            vec![Action::Create {
                record: expected,
                deadline: ms(3) + ms(2500)
            }]
        );
        let a = m.handle(Event::WriteDone(Ok(ver("1"))), ms(5), wall());
        assert_eq!(
            a,
            vec![
                Action::NewLeader {
                    identity: "me".into()
                },
                Action::StartedLeading {
                    token: FencingToken(0)
                }
            ]
        );
        assert!(m.is_leader());
        assert_eq!(m.status().fencing_token, Some(FencingToken(0)));
    }

    #[test]
    fn renews_every_half_renew_deadline_keeping_term_fields() {
        let mut m = leader();
        let at = m.deadline().unwrap();
        assert!(
            at >= 5 * S && at < 6 * S,
            "renew at half the renew deadline (10 s), not the retry period (2 s), with ≤20% jitter: {at:?}"
        );
        assert!(m.handle(Event::Timer, at - ms(1), wall()).is_empty());
        let later = wall()
            .checked_add(jiff::SignedDuration::from_secs(5))
            .unwrap();
        let a = m.handle(Event::Timer, at, later);
        let [
            Action::Update {
                record,
                version,
                deadline,
            },
        ] = a.as_slice()
        else {
            panic!("{a:?}")
        };
        assert_eq!(version, &ver("1"));
        assert_eq!(record.renew_time, Some(later));
        assert_eq!(record.acquire_time, Some(wall()));
        assert_eq!(record.leader_transitions, 0);
        assert_eq!(*deadline, at + ms(2500));
        assert!(
            m.handle(Event::WriteDone(Ok(ver("2"))), at + ms(2), wall())
                .is_empty()
        );
        assert!(m.is_leader());
    }

    #[test]
    fn a_slow_answer_never_pushes_the_renewal_past_the_step_down() {
        // Valid (10 s > 1.2 × 8 s), but 8 s plus up to 20 % jitter after a slow answer would
        // land after the step-down at send + 10 s.
        let timing = Timing {
            lease_duration: 15 * S,
            renew_deadline: 10 * S,
            retry_period: 8 * S,
            ..Timing::default()
        };
        for seed in 0..50 {
            let mut m = Machine::new("me", timing.clone(), seed).unwrap();
            m.handle(Event::Start, Duration::ZERO, wall());
            m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
            // The acquisition sent at 0 is answered after 1.5 s.
            m.handle(Event::WriteDone(Ok(ver("1"))), ms(1500), wall());
            assert!(m.is_leader());
            let renew_at = m.deadline().unwrap();
            assert!(
                renew_at + ms(2500) <= 10 * S,
                "{seed}: renewal at {renew_at:?} leaves no time before the step-down"
            );
            let a = m.handle(Event::Timer, renew_at, wall());
            assert!(matches!(a.as_slice(), [Action::Update { .. }]), "{a:?}");
        }
    }

    #[test]
    fn steps_down_when_renewals_fail_within_the_renew_deadline() {
        let mut m = leader();
        let now = loop {
            let now = m.deadline().unwrap();
            let a = m.handle(Event::Timer, now, wall());
            if a.iter().any(|a| matches!(a, Action::StoppedLeading { .. })) {
                assert_eq!(
                    now,
                    10 * S,
                    "step-down exactly at last successful send + renew deadline"
                );
                assert!(a.contains(&Action::StoppedLeading {
                    token: FencingToken(0),
                    reason: StepDown::DeadlineExceeded
                }));
                break now;
            }
            assert!(
                matches!(
                    a.as_slice(),
                    [Action::Update { .. }] | [Action::Read { .. }]
                ),
                "{a:?}"
            );
            m.handle(
                Event::WriteDone(Err(ErrorKind::Failed)),
                now + ms(10),
                wall(),
            );
            m.handle(
                Event::ReadDone(Err(ErrorKind::Failed)),
                now + ms(10),
                wall(),
            );
        };
        assert!(!m.is_leader());
        assert!(now < 15 * S);
    }

    #[test]
    fn a_failed_renewal_is_tried_again_before_the_step_down_with_long_retry_periods() {
        // 60 s / 40 s / 20 s: the routine renewal goes out at 20–24 s; a retry a retry period
        // after it fails would be at 40–44 s, past the 40 s step-down.
        let timing = Timing {
            lease_duration: 60 * S,
            renew_deadline: 40 * S,
            retry_period: 20 * S,
            release_on_cancel: true,
        };
        for seed in 0..50 {
            let mut m = Machine::new("me", timing.clone(), seed).unwrap();
            m.handle(Event::Start, Duration::ZERO, wall());
            let a = m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
            let [Action::Create { record, .. }] = a.as_slice() else {
                panic!("{a:?}")
            };
            let acquired = record.clone();
            m.handle(Event::WriteDone(Ok(ver("1"))), Duration::ZERO, wall());
            let at = m.deadline().unwrap();
            assert!(at >= 20 * S && at < 24 * S, "{seed}: renewal at {at:?}");
            let a = m.handle(Event::Timer, at, wall());
            assert!(matches!(a.as_slice(), [Action::Update { .. }]), "{a:?}");
            m.handle(Event::WriteDone(Err(ErrorKind::Failed)), at + ms(5), wall());
            // One last try, a request timeout (10 s) before the step-down.
            assert_eq!(m.deadline(), Some(30 * S), "{seed}");
            assert_eq!(m.timer_slack(), Duration::ZERO);
            let a = m.handle(Event::Timer, 30 * S, wall());
            let [Action::Read { deadline }] = a.as_slice() else {
                panic!("{a:?}")
            };
            assert_eq!(*deadline, 40 * S);
            let a = m.handle(
                Event::ReadDone(Ok(seen(acquired, "1"))),
                30 * S + ms(5),
                wall(),
            );
            let [Action::Update { deadline, .. }] = a.as_slice() else {
                panic!("{a:?}")
            };
            assert_eq!(*deadline, 40 * S);
            m.handle(Event::WriteDone(Ok(ver("2"))), 30 * S + ms(10), wall());
            assert!(m.is_leader(), "{seed}: kept the term");
            assert!(
                m.deadline().unwrap() >= 50 * S,
                "{seed}: renews from the retry on"
            );
        }
    }

    #[test]
    fn retries_come_a_retry_period_apart_with_one_early_try_when_that_is_too_late() {
        use super::leader_retry_at as at;
        // 15 s / 10 s / 2 s (request timeout 2.5 s): failures at 5 s, 7 s, 7.5 s, 9.5 s.
        assert_eq!(at(5 * S, 10 * S, 2 * S, ms(2500), false), (7 * S, false));
        assert_eq!(at(7 * S, 10 * S, 2 * S, ms(2500), false), (ms(7500), true));
        assert_eq!(
            at(ms(7500), 10 * S, 2 * S, ms(2500), true),
            (ms(9500), false)
        );
        assert_eq!(
            at(ms(9500), 10 * S, 2 * S, ms(2500), true),
            (ms(11_500), false)
        );
        // 60 s / 40 s / 20 s (request timeout 10 s): a fast failure of the renewal at 22 s, or
        // one that hung until 32 s; then the step-down comes first.
        assert_eq!(at(22 * S, 40 * S, 20 * S, 10 * S, false), (30 * S, true));
        assert_eq!(at(32 * S, 40 * S, 20 * S, 10 * S, false), (37 * S, true));
        assert_eq!(at(37 * S, 40 * S, 20 * S, 10 * S, true), (57 * S, false));
        // 15 s / 10 s / 6 s (retry period above half the renew deadline): renewals at 6–7.2 s.
        assert_eq!(at(7 * S, 10 * S, 6 * S, ms(2500), false), (ms(8500), true));
    }

    #[test]
    fn a_renewal_that_hangs_is_still_tried_again_with_long_retry_periods() {
        let timing = Timing {
            lease_duration: 60 * S,
            renew_deadline: 40 * S,
            retry_period: 20 * S,
            release_on_cancel: true,
        };
        let mut m = Machine::new("me", timing, 3).unwrap();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
        m.handle(Event::WriteDone(Ok(ver("1"))), Duration::ZERO, wall());
        let at = m.deadline().unwrap();
        let a = m.handle(Event::Timer, at, wall());
        let [Action::Update { deadline, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(*deadline, at + 10 * S, "a quarter renew deadline");
        m.handle(Event::WriteDone(Err(ErrorKind::Timeout)), *deadline, wall());
        let next = m.deadline().unwrap();
        assert_eq!(
            next,
            at + 15 * S,
            "a quarter retry period after the timeout"
        );
        assert!(next < 40 * S);
        let a = m.handle(Event::Timer, next, wall());
        assert!(
            matches!(a.as_slice(), [Action::Read { deadline }] if *deadline == 40 * S),
            "{a:?}"
        );
    }

    #[test]
    fn on_a_slow_network_the_request_budget_grows_and_comes_back() {
        // 3 s / 2 s / 0.5 s, as the fault run: the base request timeout is 500 ms, and 300 ms
        // of latency each way makes every round trip at least 600 ms.
        let timing = Timing {
            lease_duration: 3 * S,
            renew_deadline: 2 * S,
            retry_period: ms(500),
            release_on_cancel: true,
        };
        let mut m = Machine::new("me", timing.clone(), 3).unwrap();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
        m.handle(Event::WriteDone(Ok(ver("1"))), Duration::ZERO, wall());
        let deadline_of = |a: &[Action]| match a {
            [Action::Update { deadline, .. }] | [Action::Read { deadline }] => *deadline,
            other => panic!("{other:?}"),
        };
        // The renewal times out at its 500 ms budget.
        let at = m.deadline().unwrap();
        let a = m.handle(Event::Timer, at, wall());
        assert_eq!(deadline_of(&a), at + ms(500));
        m.handle(
            Event::WriteDone(Err(ErrorKind::Timeout)),
            at + ms(500),
            wall(),
        );
        // The retry gets 4 × 500 ms, capped at half the renew deadline (and at the step-down).
        let next = m.deadline().unwrap();
        let a = m.handle(Event::Timer, next, wall());
        assert_eq!(deadline_of(&a), (next + S).min(2 * S), "{a:?}");
        // A standby's acquisition on the same network has the full second: after the step-down,
        // a new term answered in 600 ms.
        let mut m = Machine::new("me", timing, 3).unwrap();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(Event::ReadDone(Err(ErrorKind::Timeout)), ms(500), wall());
        let t = m.deadline().unwrap();
        let a = m.handle(Event::Timer, t, wall());
        assert_eq!(
            deadline_of(&a),
            t + S,
            "a read after a timed-out one: {a:?}"
        );
        let a = m.handle(Event::ReadDone(Ok(None)), t + ms(600), wall());
        let [Action::Create { deadline, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(*deadline, t + ms(600) + S);
        let a = m.handle(Event::WriteDone(Ok(ver("1"))), t + ms(1200), wall());
        assert!(
            a.contains(&Action::StartedLeading {
                token: FencingToken(0)
            }),
            "{a:?}"
        );
        // Eight fast answers later the budget is back to 500 ms.
        let mut now = t + ms(1200);
        for n in 0..9 {
            let at = m.deadline().unwrap();
            let a = m.handle(Event::Timer, at, wall());
            let d = deadline_of(&a);
            if n == 8 {
                assert_eq!(d, at + ms(500), "{a:?}");
            }
            now = at + ms(5);
            m.handle(
                Event::WriteDone(Ok(ver(&format!("{}", n + 2)))),
                now,
                wall(),
            );
        }
        let _ = now;
    }

    #[test]
    fn a_hung_renewal_cannot_outlive_the_step_down() {
        let mut m = leader();
        // The renewal at ~5 s hangs until its deadline (a quarter of the renew deadline); the
        // retry after it hangs too, and its deadline is capped at the step-down time (10 s).
        let at = m.deadline().unwrap();
        let a = m.handle(Event::Timer, at, wall());
        let [Action::Update { deadline, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(*deadline, at + ms(2500));
        m.handle(
            Event::WriteDone(Err(ErrorKind::Timeout)),
            at + ms(2500),
            wall(),
        );
        let next = m.deadline().unwrap();
        assert!(next < 10 * S, "a retry before the step-down: {next:?}");
        let a = m.handle(Event::Timer, next, wall());
        let deadline = match a.as_slice() {
            [Action::Read { deadline }] | [Action::Update { deadline, .. }] => *deadline,
            other => panic!("{other:?}"),
        };
        assert_eq!(deadline, 10 * S, "request deadline is the step-down time");
        // Nothing comes back: the timer alone steps down, and the request is abandoned.
        assert_eq!(m.deadline(), Some(10 * S));
        let a = m.handle(Event::Timer, 10 * S, wall());
        assert_eq!(
            &a[..2],
            &[
                Action::StoppedLeading {
                    token: FencingToken(0),
                    reason: StepDown::DeadlineExceeded
                },
                Action::Abandon
            ]
        );
    }

    #[test]
    fn takeover_is_measured_from_observation_not_record_timestamps() {
        for hours_off in [-5, 0, 5] {
            let mut m = machine();
            m.handle(Event::Start, Duration::ZERO, wall());
            let t0 = 100 * S;
            let a = m.handle(
                Event::ReadDone(Ok(seen(other("x", 4, hours_off), "7"))),
                t0,
                wall(),
            );
            assert_eq!(
                a,
                vec![
                    Action::NewLeader {
                        identity: "x".into()
                    },
                    Action::Watch {
                        from: Some(ver("7"))
                    }
                ]
            );
            assert_eq!(
                m.deadline(),
                Some(t0 + 10 * S),
                "a read after two renew intervals of silence"
            );
            quiet_read(&mut m, seen(other("x", 4, hours_off), "7"));
            assert_eq!(
                m.deadline(),
                Some(t0 + 15 * S),
                "expiry timer at observed + lease"
            );
            assert!(
                m.handle(Event::Timer, t0 + 15 * S - ms(1), wall())
                    .is_empty()
            );
            let a = m.handle(Event::Timer, t0 + 15 * S, wall());
            let [
                Action::Update {
                    record, version, ..
                },
                Action::Unwatch,
            ] = a.as_slice()
            else {
                panic!("{a:?}")
            };
            assert_eq!(version, &ver("7"));
            assert_eq!(record.holder_identity, "me");
            assert_eq!(
                record.leader_transitions, 5,
                "fencing token = transitions + 1"
            );
        }
    }

    #[test]
    fn a_watch_that_hangs_is_found_by_the_read_after_its_silence_and_replaced() {
        let (mut m, _) = observing(other("x", 1, 0));
        // Renewals arrive through the watch at 5 s, then it hangs (the holder renews on).
        let mut renewed = other("x", 1, 0);
        renewed.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_secs(5))
                .unwrap(),
        );
        m.handle(Event::Watched(seen(renewed.clone(), "2")), 5 * S, wall());
        assert_eq!(m.deadline(), Some(15 * S), "a read after 10 s of silence");
        let a = m.handle(Event::Timer, 15 * S, wall());
        assert!(matches!(a.as_slice(), [Action::Read { .. }]), "{a:?}");
        // The read finds a later renewal the watch did not deliver: the watch is stuck.
        renewed.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_secs(10))
                .unwrap(),
        );
        let a = m.handle(Event::ReadDone(Ok(seen(renewed, "9"))), 15 * S, wall());
        assert_eq!(
            a,
            vec![
                Action::WatchStale { silent_for: 10 * S },
                Action::Unwatch,
                Action::Watch {
                    from: Some(ver("9"))
                }
            ]
        );
        // Expiry counts from the read that saw the change. Without the read, the stuck watch
        // would have left the next look to 20 s (5 s + a lease), and a crash of the holder
        // just after its unseen renewal would have cost up to two leases.
        assert_eq!(m.deadline(), Some(25 * S));
    }

    #[test]
    fn a_changed_record_restarts_the_expiry_clock() {
        let (mut m, _) = observing(other("x", 1, 0));
        let mut renewed = other("x", 1, 0);
        renewed.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_secs(2))
                .unwrap(),
        );
        m.handle(Event::Watched(seen(renewed.clone(), "2")), 10 * S, wall());
        assert_eq!(m.deadline(), Some(20 * S), "a read after 10 s of silence");
        // The same record again (a re-read) does not restart it.
        m.handle(Event::Watched(seen(renewed.clone(), "2")), 12 * S, wall());
        assert_eq!(m.deadline(), Some(22 * S));
        quiet_read(&mut m, seen(renewed, "2"));
        assert_eq!(m.deadline(), Some(25 * S), "expiry from the change at 10 s");
    }

    #[test]
    fn acquires_at_once_on_release_seen_by_the_watch() {
        let (mut m, _) = observing(other("x", 3, 0));
        let released = LeaderRecord {
            lease_duration_seconds: 1,
            leader_transitions: 3,
            ..other("", 3, 0)
        };
        let a = m.handle(Event::Watched(seen(released, "2")), S, wall());
        assert_eq!(
            a[0],
            Action::NewLeader {
                identity: String::new()
            }
        );
        let Action::Update {
            record, version, ..
        } = &a[1]
        else {
            panic!("{a:?}")
        };
        assert_eq!((record.leader_transitions, version), (4, &ver("2")));
        let a = m.handle(Event::WriteDone(Ok(ver("3"))), S + ms(2), wall());
        assert_eq!(
            a.last(),
            Some(&Action::StartedLeading {
                token: FencingToken(4)
            })
        );
    }

    #[test]
    fn a_conflict_means_read_again_and_never_overwrite_a_valid_lease() {
        let (mut m, _) = observing(other("", 3, 0));
        let a = m.handle(Event::WriteDone(Err(ErrorKind::Conflict)), ms(5), wall());
        assert!(
            matches!(a.as_slice(), [Action::Read { .. }, Action::Watch { .. }]),
            "reads again, and watches while it waits: {a:?}"
        );
        // Someone else got it: wait a full lease from now.
        let a = m.handle(
            Event::ReadDone(Ok(seen(other("y", 4, 0), "2"))),
            ms(6),
            wall(),
        );
        assert_eq!(
            a,
            vec![Action::NewLeader {
                identity: "y".into()
            }]
        );
        assert_eq!(m.deadline(), Some(ms(6) + 10 * S));
        quiet_read(&mut m, seen(other("y", 4, 0), "2"));
        assert_eq!(m.deadline(), Some(ms(6) + 15 * S));
    }

    #[test]
    fn losing_the_record_steps_down_at_once() {
        let mut m = leader();
        let a = m.handle(Event::Watched(seen(other("y", 1, 0), "5")), S, wall());
        assert_eq!(
            &a[..2],
            &[
                Action::StoppedLeading {
                    token: FencingToken(0),
                    reason: StepDown::Lost { holder: "y".into() }
                },
                Action::NewLeader {
                    identity: "y".into()
                },
            ]
        );
        assert!(!m.is_leader());
    }

    #[test]
    fn a_standby_watches_from_the_version_it_read_and_keeps_one_watch() {
        let (mut m, a) = observing(other("x", 1, 0));
        assert_eq!(
            a,
            vec![
                Action::NewLeader {
                    identity: "x".into()
                },
                Action::Watch {
                    from: Some(ver("1"))
                }
            ]
        );
        // Renewals arrive through it; nothing else to do.
        let mut renewed = other("x", 1, 0);
        renewed.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_secs(5))
                .unwrap(),
        );
        assert_eq!(
            m.handle(Event::Watched(seen(renewed, "2")), 5 * S, wall()),
            vec![]
        );
        assert_eq!(m.handle(Event::Timer, 6 * S, wall()), vec![]);
    }

    #[test]
    fn a_watch_that_ends_is_replaced_after_a_backoff_doubling_up_to_the_retry_period() {
        let (mut m, _) = observing(other("x", 1, 0));
        let mut now = S;
        let mut waits = Vec::new();
        for _ in 0..6 {
            // It ends: read again at once, and watch again only after the backoff.
            let a = m.handle(Event::WatchLost, now, wall());
            assert!(matches!(a.as_slice(), [Action::Read { .. }]), "{a:?}");
            let a = m.handle(
                Event::ReadDone(Ok(seen(other("x", 1, 0), "1"))),
                now,
                wall(),
            );
            assert!(a.is_empty(), "{a:?}");
            let at = m.deadline().unwrap();
            waits.push(at - now);
            assert!(m.handle(Event::Timer, at - ms(1), wall()).is_empty());
            let a = m.handle(Event::Timer, at, wall());
            assert_eq!(
                a,
                vec![Action::Watch {
                    from: Some(ver("1"))
                }]
            );
            now = at + ms(10);
        }
        assert_eq!(
            waits,
            [ms(100), ms(200), ms(400), ms(800), ms(1600), ms(2000)]
        );
        // A watch that delivers resets it.
        m.handle(Event::Watched(seen(other("x", 1, 0), "1")), now, wall());
        m.handle(Event::WatchLost, now, wall());
        m.handle(
            Event::ReadDone(Ok(seen(other("x", 1, 0), "1"))),
            now,
            wall(),
        );
        assert_eq!(m.deadline(), Some(now + ms(100)));
    }

    #[test]
    fn acquiring_closes_the_watch_a_leader_has_none_and_losing_opens_one() {
        let (mut m, _) = observing(other("x", 3, 0));
        let a = m.handle(Event::Watched(seen(released(3), "2")), S, wall());
        assert!(
            matches!(
                a.as_slice(),
                [
                    Action::NewLeader { .. },
                    Action::Update { .. },
                    Action::Unwatch
                ]
            ),
            "{a:?}"
        );
        let a = m.handle(Event::WriteDone(Ok(ver("3"))), S, wall());
        assert!(
            !a.iter().any(|a| matches!(a, Action::Watch { .. })),
            "{a:?}"
        );
        // The leader's renewal meets a conflict: it reads, finds another holder, steps down,
        // and only then watches again, from what it read.
        let at = m.deadline().unwrap();
        m.handle(Event::Timer, at, wall());
        let a = m.handle(Event::WriteDone(Err(ErrorKind::Conflict)), at, wall());
        assert!(matches!(a.as_slice(), [Action::Read { .. }]), "{a:?}");
        let a = m.handle(Event::ReadDone(Ok(seen(other("y", 5, 0), "9"))), at, wall());
        assert_eq!(
            a.last(),
            Some(&Action::Watch {
                from: Some(ver("9"))
            }),
            "{a:?}"
        );
        assert!(matches!(a[0], Action::StoppedLeading { .. }), "{a:?}");
    }

    #[test]
    fn a_cancelled_standby_closes_its_watch() {
        let (mut m, _) = observing(other("x", 1, 0));
        assert_eq!(
            m.handle(Event::Cancel, S, wall()),
            vec![Action::Finished, Action::Unwatch]
        );
    }

    /// A leader at t=0 on an absent lock, with drain on.
    fn draining_leader() -> Machine {
        let mut m = machine().with_drain(true);
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
        m.handle(Event::WriteDone(Ok(ver("1"))), Duration::ZERO, wall());
        assert!(m.is_leader());
        m
    }

    fn released(transitions: i32) -> LeaderRecord {
        let mut r = other("", transitions, 0);
        r.lease_duration_seconds = 1;
        r
    }

    #[test]
    fn with_drain_a_cancel_releases_only_once_the_work_has_returned() {
        let mut m = draining_leader();
        let a = m.handle(Event::Cancel, S, wall());
        assert_eq!(
            a,
            vec![Action::StoppedLeading {
                token: FencingToken(0),
                reason: StepDown::Cancelled
            }],
            "the work is told to stop; nothing is written yet"
        );
        assert!(m.draining());
        // Renewals have stopped: the term ends at its renew deadline (10 s), which is when a
        // work still running is late.
        assert_eq!(m.deadline(), Some(10 * S));
        let a = m.handle(Event::Timer, 4 * S, wall());
        assert!(a.is_empty(), "{a:?}");
        let a = m.handle(Event::Drained, 4 * S + ms(5), wall());
        let [Action::Update { record, .. }] = &a[..] else {
            panic!("released once drained: {a:?}")
        };
        assert!(record.is_released());
        let a = m.handle(Event::WriteDone(Ok(ver("2"))), 4 * S + ms(7), wall());
        assert_eq!(a.last(), Some(&Action::Finished));
    }

    #[test]
    fn a_step_down_drains_releases_and_sits_out_the_hold_off_then_contends_again() {
        let mut m = draining_leader();
        let a = m.handle(Event::StepDown { hold_off: 20 * S }, S, wall());
        assert_eq!(
            a,
            vec![Action::StoppedLeading {
                token: FencingToken(0),
                reason: StepDown::Requested
            }],
            "the work is told to stop; nothing is written yet"
        );
        let a = m.handle(Event::Drained, S + ms(5), wall());
        let [
            Action::Update {
                record, version, ..
            },
        ] = &a[..]
        else {
            panic!("released once drained: {a:?}")
        };
        assert!(record.is_released());
        assert_eq!(version, &ver("1"));
        // Released: a standby again, still running, watching the lock.
        let a = m.handle(Event::WriteDone(Ok(ver("2"))), S + ms(7), wall());
        assert_eq!(
            a,
            vec![
                Action::NewLeader {
                    identity: String::new()
                },
                Action::Watch {
                    from: Some(ver("2"))
                }
            ]
        );
        assert!(m.is_standby());
        // The lock stays free for the others: no acquisition during the hold-off, only a look
        // when it ends.
        assert_eq!(
            m.deadline(),
            Some(15 * S),
            "a read a lease after the last news"
        );
        let a = m.handle(Event::Watched(seen(released(0), "2")), 10 * S, wall());
        assert!(a.is_empty(), "{a:?}");
        assert_eq!(m.deadline(), Some(21 * S));
        let a = m.handle(Event::Timer, 21 * S - ms(1), wall());
        assert!(a.is_empty(), "{a:?}");
        let a = m.handle(Event::Timer, 21 * S, wall());
        let [Action::Update { record, .. }, Action::Unwatch] = &a[..] else {
            panic!("contends once the hold-off is over: {a:?}")
        };
        assert_eq!(record.holder_identity, "me");
        assert_eq!(record.leader_transitions, 1, "a new term, a new token");
    }

    #[test]
    fn a_step_down_without_work_releases_at_once_and_a_standby_just_sits_out() {
        let mut m = leader();
        let a = m.handle(Event::StepDown { hold_off: 5 * S }, S, wall());
        let [
            Action::StoppedLeading {
                reason: StepDown::Requested,
                ..
            },
            Action::Update { record, .. },
        ] = &a[..]
        else {
            panic!("{a:?}")
        };
        assert!(record.is_released());
        // Another candidate takes the released lock; this one follows it as a standby.
        m.handle(Event::WriteDone(Ok(ver("2"))), S, wall());
        let a = m.handle(Event::Watched(seen(other("y", 1, 0), "3")), 2 * S, wall());
        assert_eq!(
            a,
            vec![Action::NewLeader {
                identity: "y".into()
            }]
        );
        // A standby asked to step down sits out: the expired lock is not taken before the
        // hold-off ends.
        let (mut m, _) = observing(other("x", 1, 0));
        assert!(
            m.handle(Event::StepDown { hold_off: 30 * S }, S, wall())
                .is_empty()
        );
        // Reads while the watch is silent (at 10, 20 and 30 s); expired from 15 s, but
        // sitting out.
        for at in [10 * S, 20 * S, 30 * S] {
            assert_eq!(m.deadline(), Some(at));
            quiet_read(&mut m, seen(other("x", 1, 0), "1"));
        }
        assert_eq!(m.deadline(), Some(31 * S), "the end of the hold-off");
        let a = m.handle(Event::Timer, 31 * S, wall());
        assert!(
            matches!(a.first(), Some(Action::Update { record, .. }) if record.holder_identity == "me"),
            "{a:?}"
        );
    }

    #[test]
    fn an_acquisition_that_lands_after_a_step_down_was_asked_is_released_not_started() {
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        let a = m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
        assert!(matches!(a.as_slice(), [Action::Create { .. }]), "{a:?}");
        assert!(
            m.handle(Event::StepDown { hold_off: 5 * S }, ms(1), wall())
                .is_empty()
        );
        let a = m.handle(Event::WriteDone(Ok(ver("1"))), ms(2), wall());
        assert!(
            !a.iter().any(|a| matches!(a, Action::StartedLeading { .. })),
            "{a:?}"
        );
        let Some(Action::Update { record, .. }) = a.last() else {
            panic!("{a:?}")
        };
        assert!(record.is_released());
        m.handle(Event::WriteDone(Ok(ver("2"))), ms(3), wall());
        assert!(m.is_standby());
    }

    #[test]
    fn a_resume_ends_the_hold_off_at_once() {
        let (mut m, _) = observing(other("x", 1, 0));
        assert!(
            m.handle(Event::StepDown { hold_off: 30 * S }, S, wall())
                .is_empty()
        );
        let a = m.handle(Event::Watched(seen(released(1), "2")), 2 * S, wall());
        assert_eq!(
            a,
            vec![Action::NewLeader {
                identity: String::new()
            }],
            "released, but sitting out"
        );
        let a = m.handle(Event::Resume, 3 * S, wall());
        assert!(
            matches!(a.first(), Some(Action::Update { record, .. }) if record.holder_identity == "me"),
            "takes the released lock at once: {a:?}"
        );
    }

    #[test]
    fn a_leader_whose_lock_prefers_another_holder_releases_it_naming_that_holder() {
        let mut m = leader();
        // Read back after a conflict: the controller patched spec.preferredHolder on our record.
        let ours = m.own_writes.back().unwrap().clone();
        let patched = ours.clone().with_preferred_holder(Some("y".into()));
        let a = m.handle(Event::ReadDone(Ok(seen(patched, "2"))), S, wall());
        let [
            Action::StoppedLeading {
                token: FencingToken(0),
                reason: StepDown::Preferred { holder },
            },
            Action::Update {
                record, version, ..
            },
        ] = a.as_slice()
        else {
            panic!("{a:?}")
        };
        assert_eq!(holder, "y");
        assert_eq!(version, &ver("2"));
        assert!(record.is_released());
        assert_eq!(record.preferred_holder.as_deref(), Some("y"), "still named");
        // Naming this candidate itself, or nobody, changes nothing.
        for p in ["me", ""] {
            let mut m = leader();
            let ours = m.own_writes.back().unwrap().clone();
            let a = m.handle(
                Event::Watched(seen(ours.with_preferred_holder(Some(p.into())), "2")),
                S,
                wall(),
            );
            assert!(a.is_empty(), "{p:?}: {a:?}");
            assert!(m.is_leader());
        }
    }

    #[test]
    fn a_released_lock_preferring_another_holder_is_left_to_it_for_a_lease() {
        let (mut m, _) = observing(other("x", 3, 0));
        let to_y = released(3).with_preferred_holder(Some("y".into()));
        let a = m.handle(Event::Watched(seen(to_y.clone(), "2")), S, wall());
        assert_eq!(
            a,
            vec![Action::NewLeader {
                identity: String::new()
            }],
            "not taken at once"
        );
        assert_eq!(m.deadline(), Some(16 * S), "a lease from when it was seen");
        let a = m.handle(Event::Timer, 16 * S, wall());
        assert!(
            matches!(a.first(), Some(Action::Update { record, .. }) if record.holder_identity == "me" && record.preferred_holder.is_none()),
            "then anyone's; a new term clears the preference: {a:?}"
        );
        // The preferred holder itself takes it at once.
        let (mut m, _) = observing(other("x", 3, 0));
        let to_me = released(3).with_preferred_holder(Some("me".into()));
        let a = m.handle(Event::Watched(seen(to_me, "2")), S, wall());
        assert!(
            a.iter().any(|a| matches!(a, Action::Update { .. })),
            "{a:?}"
        );
    }

    #[test]
    fn a_transfer_drains_then_writes_the_target_as_holder_with_the_next_token_and_a_mark() {
        let mut m = draining_leader();
        let a = m.handle(Event::Transfer { to: "y".into() }, S, wall());
        assert_eq!(
            a,
            vec![Action::StoppedLeading {
                token: FencingToken(0),
                reason: StepDown::Transferred { to: "y".into() }
            }]
        );
        let a = m.handle(Event::Drained, S + ms(5), wall());
        let [
            Action::Update {
                record, version, ..
            },
        ] = a.as_slice()
        else {
            panic!("{a:?}")
        };
        assert_eq!(version, &ver("1"));
        assert_eq!(record.holder_identity, "y");
        assert_eq!(record.leader_transitions, 1, "the next token");
        assert_eq!(record.lease_duration_seconds, 15, "held, not released");
        assert_eq!(record.handover_from.as_deref(), Some("me"));
        m.handle(Event::WriteDone(Ok(ver("2"))), S + ms(6), wall());
        assert!(m.is_standby());
        // To itself, to nobody, or while not leading: nothing.
        let mut m = leader();
        for to in ["me", ""] {
            assert!(
                m.handle(Event::Transfer { to: to.into() }, S, wall())
                    .is_empty()
            );
            assert!(m.is_leader());
        }
        let (mut m, _) = observing(other("x", 1, 0));
        assert!(
            m.handle(Event::Transfer { to: "y".into() }, S, wall())
                .is_empty()
        );
    }

    #[test]
    fn the_target_takes_a_handover_at_once_with_its_token_and_others_wait() {
        let handover = other("me", 4, 0).with_handover_from(Some("x".into()));
        let (mut m, _) = observing(other("x", 3, 0));
        let a = m.handle(Event::Watched(seen(handover.clone(), "2")), S, wall());
        let Some(Action::Update {
            record, version, ..
        }) = a.iter().find(|a| matches!(a, Action::Update { .. }))
        else {
            panic!("takes it at once: {a:?}")
        };
        assert_eq!(version, &ver("2"));
        assert_eq!(record.holder_identity, "me");
        assert_eq!(
            record.leader_transitions, 4,
            "the token the handover carries"
        );
        assert_eq!(record.handover_from, None, "the mark is cleared");
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::DuplicateIdentity { .. })),
            "{a:?}"
        );
        let a = m.handle(Event::WriteDone(Ok(ver("3"))), S + ms(2), wall());
        assert_eq!(
            a.last(),
            Some(&Action::StartedLeading {
                token: FencingToken(4)
            })
        );
        // Another candidate sees a held lock and waits it out.
        let mut m = Machine::new("z", timing(), 7).unwrap();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(
            Event::ReadDone(Ok(seen(other("x", 3, 0), "1"))),
            Duration::ZERO,
            wall(),
        );
        let a = m.handle(Event::Watched(seen(handover.clone(), "2")), S, wall());
        assert_eq!(
            a,
            vec![Action::NewLeader {
                identity: "me".into()
            }]
        );
        // The same record without the mark is a stranger's write under our name: never adopted.
        let (mut m, _) = observing(other("x", 3, 0));
        let a = m.handle(Event::Watched(seen(other("me", 4, 0), "2")), S, wall());
        assert!(
            !a.iter().any(|a| matches!(a, Action::Update { .. })),
            "{a:?}"
        );
    }

    #[test]
    fn a_cancel_during_a_step_downs_release_finishes() {
        let mut m = leader();
        m.handle(Event::StepDown { hold_off: 5 * S }, S, wall());
        assert!(m.handle(Event::Cancel, S, wall()).is_empty());
        let a = m.handle(Event::WriteDone(Ok(ver("2"))), S, wall());
        assert_eq!(a.last(), Some(&Action::Finished), "{a:?}");
    }

    #[test]
    fn with_drain_a_work_that_never_returns_is_reported_and_the_lock_left_to_expire() {
        let mut m = draining_leader();
        m.handle(Event::Cancel, S, wall());
        let a = m.handle(Event::Timer, 10 * S, wall());
        assert_eq!(
            a,
            vec![Action::WorkOverran {
                token: FencingToken(0)
            }]
        );
        // No release while the work may still act: the lease expires for the others 15 s after
        // the last renewal they saw, as if this process had died.
        assert_eq!(m.deadline(), Some(15 * S));
        let a = m.handle(Event::Timer, 15 * S, wall());
        assert_eq!(a, vec![Action::Finished]);
    }

    #[test]
    fn with_drain_no_new_term_starts_before_the_last_terms_work_has_returned() {
        let mut m = draining_leader();
        let a = m.handle(Event::Watched(seen(other("y", 1, 0), "5")), S, wall());
        assert!(matches!(
            a[0],
            Action::StoppedLeading {
                reason: StepDown::Lost { .. },
                ..
            }
        ));
        // The other leader releases at once; the lock is free, but our work still runs.
        m.handle(Event::ReadDone(Ok(seen(other("y", 1, 0), "5"))), S, wall());
        let a = m.handle(Event::Watched(seen(released(1), "6")), 2 * S, wall());
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::Update { .. } | Action::Create { .. })),
            "no acquisition while draining: {a:?}"
        );
        let a = m.handle(Event::Drained, 2 * S + ms(3), wall());
        let [Action::Update { record, .. }, Action::Unwatch] = &a[..] else {
            panic!("acquires once drained: {a:?}")
        };
        assert_eq!(record.leader_transitions, 2);
    }

    #[test]
    fn with_drain_a_work_stopped_at_the_renew_deadline_gets_half_the_margin() {
        let mut m = draining_leader();
        // Every renewal fails from now on.
        let at = m.deadline().unwrap();
        m.handle(Event::Timer, at, wall());
        m.handle(Event::WriteDone(Err(ErrorKind::Failed)), at + ms(1), wall());
        let mut now = at + ms(1);
        let mut stopped_at = None;
        while stopped_at.is_none() {
            now = m.deadline().unwrap().max(now);
            let a = m.handle(Event::Timer, now, wall());
            if a.iter().any(|a| matches!(a, Action::StoppedLeading { .. })) {
                stopped_at = Some(now);
            }
            if m.inflight.is_some() {
                m.handle(Event::WriteDone(Err(ErrorKind::Failed)), now, wall());
            }
        }
        let stopped_at = stopped_at.unwrap();
        assert_eq!(stopped_at, 10 * S, "the step-down at the renew deadline");
        // The work was told to stop at the end of its term: it is late only after half the
        // 5 s margin, the grace the CLI gives a child before SIGKILL.
        assert!(m.deadline().unwrap() <= 12 * S + ms(500));
        let a = m.handle(Event::Timer, 12 * S + ms(499), wall());
        assert!(
            !a.contains(&Action::WorkOverran {
                token: FencingToken(0)
            }),
            "{a:?}"
        );
        let a = m.handle(Event::Timer, 12 * S + ms(500), wall());
        assert!(
            a.contains(&Action::WorkOverran {
                token: FencingToken(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn own_writes_echoed_by_the_watch_are_not_foreign() {
        let mut m = leader();
        let at = m.deadline().unwrap();
        let a = m.handle(Event::Timer, at, wall());
        let [Action::Update { record, .. }] = a.as_slice() else {
            panic!()
        };
        let record = record.clone();
        // The watch delivers the acquisition's record late, then the renewal.
        let first = LeaderRecord {
            renew_time: Some(wall()),
            ..record.clone()
        };
        assert!(
            m.handle(Event::Watched(seen(first, "1")), at, wall())
                .is_empty()
        );
        assert!(
            m.handle(Event::WriteDone(Ok(ver("2"))), at, wall())
                .is_empty()
        );
        assert!(
            m.handle(Event::Watched(seen(record, "2")), at, wall())
                .is_empty()
        );
        assert!(m.is_leader());
    }

    #[test]
    fn cancel_steps_down_then_releases_like_client_go() {
        let mut m = leader();
        let a = m.handle(Event::Cancel, S, wall());
        assert_eq!(
            a[0],
            Action::StoppedLeading {
                token: FencingToken(0),
                reason: StepDown::Cancelled
            }
        );
        let Action::Update {
            record, version, ..
        } = &a[1]
        else {
            panic!("{a:?}")
        };
        assert_eq!(version, &ver("1"));
        assert_eq!(record.holder_identity, "");
        assert_eq!(record.lease_duration_seconds, 1);
        assert_eq!(record.leader_transitions, 0);
        let a = m.handle(Event::WriteDone(Ok(ver("2"))), S, wall());
        assert_eq!(
            a,
            vec![
                Action::NewLeader {
                    identity: String::new()
                },
                Action::Finished
            ]
        );
        assert_eq!(m.status().role, Role::Stopped);
    }

    #[test]
    fn a_release_that_meets_a_conflict_reads_and_retries() {
        // REAL-SERVERS.md: a release racing the first renewal got a conflict and the lease stayed
        // held for a full lease duration. Here it re-reads and releases on the new version.
        let mut m = leader();
        let at = m.deadline().unwrap();
        let a = m.handle(Event::Timer, at, wall());
        let [
            Action::Update {
                record: renewal, ..
            },
        ] = a.as_slice()
        else {
            panic!()
        };
        let renewal = renewal.clone();
        m.handle(
            Event::WriteDone(Err(ErrorKind::Timeout)),
            at + ms(1),
            wall(),
        ); // landed, unknown to us
        let a = m.handle(Event::Cancel, at + ms(2), wall());
        assert!(
            matches!(
                a.as_slice(),
                [Action::StoppedLeading { .. }, Action::Read { .. }]
            ),
            "{a:?}"
        );
        let a = m.handle(Event::ReadDone(Ok(seen(renewal, "2"))), at + ms(3), wall());
        let [
            Action::Update {
                record, version, ..
            },
        ] = a.as_slice()
        else {
            panic!("{a:?}")
        };
        assert_eq!((record.holder_identity.as_str(), version), ("", &ver("2")));
        let a = m.handle(
            Event::WriteDone(Err(ErrorKind::Conflict)),
            at + ms(4),
            wall(),
        );
        assert!(matches!(a.as_slice(), [Action::Read { .. }]), "{a:?}");
        let a = m.handle(
            Event::ReadDone(Ok(seen(other("y", 1, 0), "3"))),
            at + ms(5),
            wall(),
        );
        assert_eq!(
            a,
            vec![
                Action::NewLeader {
                    identity: "y".into()
                },
                Action::Finished
            ]
        );
    }

    #[test]
    fn cancel_during_acquisition_releases_without_starting() {
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
        assert!(
            m.handle(Event::Cancel, ms(1), wall()).is_empty(),
            "waits for the write"
        );
        let a = m.handle(Event::WriteDone(Ok(ver("1"))), ms(2), wall());
        assert!(
            !a.iter().any(|a| matches!(a, Action::StartedLeading { .. })),
            "{a:?}"
        );
        assert!(
            matches!(a.last(), Some(Action::Update { record, .. }) if record.is_released()),
            "{a:?}"
        );
    }

    #[test]
    fn a_standby_that_hears_renewals_never_reads_and_reads_after_two_renew_intervals_of_silence() {
        let (mut m, _) = observing(other("", 0, 0));
        m.handle(
            Event::WriteDone(Err(ErrorKind::Conflict)),
            Duration::ZERO,
            wall(),
        );
        m.handle(Event::ReadDone(Ok(seen(other("x", 1, 0), "2"))), S, wall());
        // The holder keeps renewing (watch events); no read is needed while it does.
        for i in 1..20u32 {
            let mut r = other("x", 1, 0);
            r.renew_time = Some(
                wall()
                    .checked_add(jiff::SignedDuration::from_secs(i.into()))
                    .unwrap(),
            );
            let a = m.handle(Event::Watched(seen(r, "3")), S * (i + 1), wall());
            assert!(a.is_empty(), "{a:?}");
        }
        // Then silence: the holder died, or the watch hangs. One read tells them apart.
        assert_eq!(m.deadline(), Some(20 * S + 10 * S));
        let mut last = other("x", 1, 0);
        last.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_secs(19))
                .unwrap(),
        );
        quiet_read(&mut m, seen(last, "3"));
        assert_eq!(m.deadline(), Some(20 * S + 15 * S), "then the expiry");
    }

    #[test]
    fn a_record_under_our_name_that_we_did_not_write_is_foreign_and_a_renewal_of_it_is_reported() {
        // Restarted with the same identity: the record may be a dead predecessor's or a live
        // twin's. Wait it out like any foreign record.
        let (mut m, a) = observing(other("me", 2, 0));
        assert_eq!(
            a,
            vec![
                Action::NewLeader {
                    identity: "me".into()
                },
                Action::Watch {
                    from: Some(ver("1"))
                }
            ],
            "no immediate takeover"
        );
        assert_eq!(m.deadline(), Some(15 * S));
        // It is renewed: a twin is alive and uses our identity. Report, keep waiting.
        let mut renewed = other("me", 2, 0);
        renewed.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_secs(2))
                .unwrap(),
        );
        let a = m.handle(Event::Watched(seen(renewed.clone(), "2")), 2 * S, wall());
        assert_eq!(
            a,
            vec![Action::DuplicateIdentity {
                record: renewed.clone()
            }]
        );
        assert_eq!(m.deadline(), Some(17 * S));
        // Reported at most once per lease duration.
        renewed.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_secs(4))
                .unwrap(),
        );
        assert!(
            m.handle(Event::Watched(seen(renewed, "3")), 4 * S, wall())
                .is_empty()
        );
        // A dead predecessor's record (unchanged for a lease) is taken over, with a new token.
        let a = m.handle(Event::Timer, 19 * S, wall());
        assert!(
            matches!(a.as_slice(), [Action::Update { record, .. }, Action::Unwatch] if record.leader_transitions == 3),
            "{a:?}"
        );
    }

    #[test]
    fn a_leader_that_sees_its_identity_renewed_by_another_steps_down_and_reports() {
        let mut m = leader();
        let mut twin = other("me", 0, 0);
        twin.renew_time = Some(
            wall()
                .checked_add(jiff::SignedDuration::from_millis(1234))
                .unwrap(),
        );
        let a = m.handle(Event::Watched(seen(twin.clone(), "7")), S, wall());
        assert_eq!(
            a[..2],
            [
                Action::StoppedLeading {
                    token: FencingToken(0),
                    reason: StepDown::DuplicateIdentity
                },
                Action::DuplicateIdentity { record: twin },
            ]
        );
        assert!(
            matches!(a[2..], [Action::Read { .. }, Action::Watch { .. }]),
            "then it reads again, and watches: {a:?}"
        );
        assert!(!m.is_leader());
    }

    #[test]
    fn own_writes_are_recognised_at_the_precision_the_backend_stores() {
        // Annotations keep whole seconds, Leases microseconds: a leader reading back its own
        // write with truncated times must not take it for a foreign record.
        let mut m = leader();
        let at = m.deadline().unwrap();
        let precise = "2030-01-01T00:00:02.123456789Z".parse().unwrap();
        let a = m.handle(Event::Timer, at, precise);
        let [Action::Update { record, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(
            record.renew_time.unwrap().subsec_nanosecond() % 1000,
            0,
            "written at microseconds"
        );
        let truncated = LeaderRecord {
            renew_time: Some("2030-01-01T00:00:02Z".parse().unwrap()),
            ..record.clone()
        };
        // That renewal lands; the next one meets a conflict (a 409 means it did not land), and
        // the read that follows finds the first one, with its times truncated.
        m.handle(Event::WriteDone(Ok(ver("2"))), at, wall());
        let next = m.deadline().unwrap();
        let a = m.handle(Event::Timer, next, wall());
        assert!(matches!(a.as_slice(), [Action::Update { .. }]), "{a:?}");
        m.handle(Event::WriteDone(Err(ErrorKind::Conflict)), next, wall());
        let a = m.handle(Event::ReadDone(Ok(seen(truncated, "9"))), next, wall());
        assert!(m.is_leader(), "{a:?}");
        assert!(
            matches!(a.as_slice(), [Action::Update { version, .. }] if *version == ver("9")),
            "{a:?}"
        );
    }

    #[test]
    fn a_deleted_held_lock_is_recreated_only_after_the_lease_and_with_a_larger_token() {
        let (mut m, _) = observing(other("x", 6, 0));
        // Someone deletes the Lease while x may still be acting.
        let a = m.handle(Event::Watched(None), 3 * S, wall());
        assert!(
            !a.iter().any(|a| matches!(a, Action::Create { .. })),
            "{a:?}"
        );
        assert_eq!(
            m.deadline(),
            Some(3 * S + 15 * S),
            "x's lease runs from the observed deletion"
        );
        let a = m.handle(Event::Timer, 18 * S, wall());
        let [Action::Create { record, .. }, Action::Unwatch] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(
            record.leader_transitions, 7,
            "tokens continue across the deletion"
        );
    }

    #[test]
    fn tokens_never_go_back_when_a_deleted_lock_is_recreated_with_a_smaller_count() {
        let (mut m, _) = observing(other("x", 6, 0));
        m.handle(Event::Watched(None), S, wall());
        // A client-go candidate re-creates it from scratch, counting from 0, and then goes silent.
        m.handle(Event::Watched(seen(other("go", 0, 0), "2")), 2 * S, wall());
        let a = m.handle(Event::Timer, 2 * S + 15 * S, wall());
        let [Action::Update { record, .. }, Action::Unwatch] = a.as_slice() else {
            panic!("{a:?}")
        };
        assert_eq!(
            record.leader_transitions, 7,
            "after the highest count seen (6), not the record's own (0)"
        );
    }

    #[test]
    fn a_twin_s_acquisition_in_the_same_second_is_not_taken_for_a_lost_write_of_ours() {
        let (mut m, a) = observing(other("", 2, 0));
        let [Action::Update { record: mine, .. }] = a.as_slice() else {
            panic!("{a:?}")
        };
        // A process under the same identity won the race with a write stamped 3 ms later, in the
        // same wall-clock second: its record differs from ours only below the second.
        let twins = LeaderRecord {
            acquire_time: Some(
                wall()
                    .checked_add(jiff::SignedDuration::from_millis(3))
                    .unwrap(),
            ),
            renew_time: Some(
                wall()
                    .checked_add(jiff::SignedDuration::from_millis(3))
                    .unwrap(),
            ),
            ..mine.clone()
        };
        m.handle(Event::WriteDone(Err(ErrorKind::Conflict)), ms(2), wall());
        let a = m.handle(Event::ReadDone(Ok(seen(twins, "2"))), ms(3), wall());
        assert!(
            !a.iter()
                .any(|a| matches!(a, Action::Update { .. } | Action::StartedLeading { .. })),
            "the twin's live term is neither resumed nor taken over: {a:?}"
        );
        assert!(!m.is_leader());
    }

    #[test]
    fn a_released_then_deleted_lock_is_recreated_at_once() {
        let (mut m, _) = observing(other("", 2, 0));
        m.handle(
            Event::WriteDone(Err(ErrorKind::Conflict)),
            Duration::ZERO,
            wall(),
        );
        let a = m.handle(Event::ReadDone(Ok(None)), S, wall());
        assert!(
            matches!(a.as_slice(), [Action::Create { record, .. }, Action::Unwatch] if record.leader_transitions == 3),
            "{a:?}"
        );
    }

    #[test]
    fn a_replayed_state_from_an_earlier_term_does_not_depose_the_leader() {
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(
            Event::ReadDone(Ok(seen(other("", 4, 0), "5"))),
            Duration::ZERO,
            wall(),
        );
        m.handle(Event::WriteDone(Ok(ver("6"))), ms(1), wall());
        assert!(m.is_leader());
        // A restarted watch delivers version 4 (x's term 4) after we acquired term 5.
        let a = m.handle(Event::Watched(seen(other("x", 4, 0), "4")), ms(2), wall());
        assert!(a.is_empty(), "{a:?}");
        assert!(m.is_leader());
    }

    #[test]
    fn invalid_config_is_rejected() {
        assert!(matches!(
            Machine::new("", timing(), 1),
            Err(crate::ConfigError::EmptyIdentity)
        ));
        let bad = Timing {
            renew_deadline: 20 * S,
            ..timing()
        };
        assert!(Machine::new("me", bad, 1).is_err());
    }

    fn unreadable(v: &str, from_read: bool) -> Event {
        Event::Unreadable {
            version: ver(v),
            from_read,
        }
    }

    #[test]
    fn an_unreadable_record_is_replaced_only_after_a_full_lease_unchanged() {
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        let a = m.handle(unreadable("3", true), Duration::ZERO, wall());
        assert!(
            a.iter()
                .all(|a| !matches!(a, Action::Update { .. } | Action::Create { .. })),
            "{a:?}"
        );
        assert_eq!(m.deadline(), Some(15 * S));
        // The object changes (still unreadable) at 10 s: the wait starts again.
        let a = m.handle(unreadable("4", false), 10 * S, wall());
        assert!(a.is_empty(), "{a:?}");
        assert!(
            m.handle(Event::Timer, 15 * S, wall())
                .iter()
                .all(|a| !matches!(a, Action::Update { .. }))
        );
        assert_eq!(m.deadline(), Some(25 * S));
        let a = m.handle(Event::Timer, 25 * S, wall());
        assert!(
            matches!(&a[0], Action::ReplaceUnreadable { version, unchanged_for } if *version == ver("4") && *unchanged_for == 15 * S),
            "{a:?}"
        );
        match &a[1] {
            Action::Update {
                record, version, ..
            } => {
                assert_eq!(version, &ver("4"));
                assert_eq!(record.holder_identity, "me");
                assert_eq!(record.leader_transitions, 0);
            }
            other => panic!("{other:?}"),
        }
        let a = m.handle(Event::WriteDone(Ok(ver("5"))), 25 * S + ms(1), wall());
        assert!(
            a.contains(&Action::StartedLeading {
                token: FencingToken(0)
            }),
            "{a:?}"
        );
    }

    #[test]
    fn tokens_continue_past_an_unreadable_record() {
        let (mut m, _) = observing(other("x", 7, 0));
        m.handle(unreadable("2", false), S, wall());
        let a = m.handle(Event::Timer, 16 * S, wall());
        assert!(
            a.iter().any(
                |a| matches!(a, Action::Update { record, .. } if record.leader_transitions == 8)
            ),
            "{a:?}"
        );
    }

    #[test]
    fn a_leader_whose_record_turns_unreadable_steps_down() {
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(Event::ReadDone(Ok(None)), Duration::ZERO, wall());
        m.handle(Event::WriteDone(Ok(ver("1"))), ms(1), wall());
        assert!(m.is_leader());
        let a = m.handle(unreadable("2", false), S, wall());
        assert!(
            a.iter().any(|a| matches!(
                a,
                Action::StoppedLeading {
                    reason: StepDown::Unreadable,
                    ..
                }
            )),
            "{a:?}"
        );
        assert!(!m.is_leader());
    }

    #[test]
    fn only_a_routine_renewal_has_timer_slack() {
        let m = machine();
        assert_eq!(m.timer_slack(), Duration::ZERO, "before the first read");
        let mut m = leader();
        // 15 s / 10 s / 2 s: renewals every 5 s (+ jitter); slack 5 s / 64.
        let slack = m.timer_slack();
        assert_eq!(slack, ms(5000) / 64);
        let renew_at = m.deadline().unwrap();
        assert!(
            renew_at + slack < timing().renew_deadline,
            "still well before the step-down"
        );
        // While the renewal is in flight the next deadline is the step-down: no slack.
        m.handle(Event::Timer, renew_at, wall());
        assert_eq!(m.timer_slack(), Duration::ZERO);
        assert_eq!(m.deadline(), Some(timing().renew_deadline));
        // Nor for the retry after a failure: every millisecond counts there.
        m.handle(
            Event::WriteDone(Err(ErrorKind::Failed)),
            renew_at + ms(10),
            wall(),
        );
        assert_eq!(
            m.deadline(),
            Some(renew_at + ms(10) + timing().retry_period)
        );
        assert_eq!(m.timer_slack(), Duration::ZERO);
    }

    #[test]
    fn slack_never_delays_a_renewal_past_its_jitter_window() {
        // The renewal grid waits up to the slack after `deadline()`. If that pushed a renewal
        // past interval × JITTER_FACTOR, a renewal due at 6 s that fails would leave room for
        // one retry (8 s) instead of two (8 s, 10 s - ε) before the 10 s step-down.
        let interval = timing().renew_interval();
        let mut m = leader();
        let (mut now, mut clipped, mut full) = (Duration::ZERO, 0, 0);
        for n in 0..2000 {
            let renew_at = m.deadline().unwrap();
            let slack = m.timer_slack();
            let latest = now + interval.mul_f64(crate::config::JITTER_FACTOR);
            assert!(renew_at >= now + interval, "{n}: early");
            assert!(
                renew_at + slack <= latest,
                "{n}: renewal at {:?} + slack {slack:?} is past {latest:?}",
                renew_at
            );
            if slack == interval / 64 {
                full += 1;
            } else {
                clipped += 1;
            }
            // Renew, late by the whole slack as the grid may make it, and succeed at once.
            now = renew_at + slack;
            let a = m.handle(Event::Timer, now, wall());
            assert!(matches!(a.as_slice(), [Action::Update { .. }]), "{a:?}");
            m.handle(Event::WriteDone(Ok(ver(&n.to_string()))), now, wall());
            assert!(m.is_leader());
        }
        // Slack is clipped only in the last 1/64 × 5 s of a 1 s jitter window: about 8 %.
        assert!(
            full > 1500 && clipped > 50,
            "full {full}, clipped {clipped}"
        );
    }

    #[test]
    fn record_time_expiry_trusts_the_renew_time() {
        // Renewed 20 s ago by the record's clock, lease 15 s: expired already.
        let mut stale = other("x", 2, 0);
        stale.renew_time = Some(wall() - jiff::SignedDuration::from_secs(20));
        stale.lease_duration_seconds = 15;
        let mut m = machine().with_record_time_expiry(true);
        m.handle(Event::Start, Duration::ZERO, wall());
        let a = m.handle(
            Event::ReadDone(Ok(seen(stale.clone(), "1"))),
            Duration::ZERO,
            wall(),
        );
        assert!(
            a.iter().any(|a| matches!(a, Action::Update { .. })),
            "{a:?}"
        );
        // Observed-time expiry (the default) waits a full lease from observation.
        let (mut m, a) = observing(stale.clone());
        assert!(
            !a.iter().any(|a| matches!(a, Action::Update { .. })),
            "{a:?}"
        );
        quiet_read(&mut m, seen(stale.clone(), "1"));
        assert_eq!(m.deadline(), Some(15 * S));
        // Renewed 5 s ago by the record's clock: record-time expiry waits 10 s more.
        stale.renew_time = Some(wall() - jiff::SignedDuration::from_secs(5));
        let mut m = machine().with_record_time_expiry(true);
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(
            Event::ReadDone(Ok(seen(stale, "1"))),
            Duration::ZERO,
            wall(),
        );
        assert_eq!(m.deadline(), Some(10 * S));
    }

    /// What an annotation lock stores, and what client-go compares: whole seconds.
    fn at_seconds(mut r: LeaderRecord) -> LeaderRecord {
        let cut = |t: Option<Timestamp>| t.and_then(|t| Timestamp::from_second(t.as_second()).ok());
        r.renew_time = cut(r.renew_time);
        r.acquire_time = cut(r.acquire_time);
        r
    }

    fn the_write(a: &[Action]) -> LeaderRecord {
        a.iter()
            .find_map(|a| match a {
                Action::Update { record, .. } | Action::Create { record, .. } => {
                    Some(record.clone())
                }
                _ => None,
            })
            .unwrap_or_else(|| panic!("no write in {a:?}"))
    }

    #[test]
    fn a_retry_landing_in_the_same_second_as_a_write_that_may_have_landed_fools_no_observer() {
        // Valid timing with under a second of margin: 3 s / 2.5 s / 0.5 s.
        let timing = Timing {
            lease_duration: 3 * S,
            renew_deadline: ms(2500),
            retry_period: ms(500),
            release_on_cancel: true,
        };
        assert_eq!(timing.validate(), Ok(()));
        // Tick t is wall time wall0 + t; wall seconds begin 200 ms after each whole tick second.
        let wall0: Timestamp = "2030-01-01T00:00:00.8Z".parse().unwrap();
        let at = |t: Duration| wall0.checked_add(t).unwrap();
        let mut l = Machine::new("l", timing.clone(), 7).unwrap();
        let mut o = Machine::new("o", timing, 9).unwrap();
        // `l` creates the lock at 0 and leads; `o` reads it at once.
        l.handle(Event::Start, Duration::ZERO, at(Duration::ZERO));
        let w0 = the_write(&l.handle(
            Event::ReadDone(Ok(None)),
            Duration::ZERO,
            at(Duration::ZERO),
        ));
        l.handle(
            Event::WriteDone(Ok(ver("1"))),
            Duration::ZERO,
            at(Duration::ZERO),
        );
        assert!(l.is_leader());
        o.handle(Event::Start, Duration::ZERO, at(Duration::ZERO));
        o.handle(
            Event::ReadDone(Ok(seen(at_seconds(w0), "1"))),
            Duration::ZERO,
            at(Duration::ZERO),
        );

        // The routine renewal lands, and `o` sees it, but `l` is answered with a 500.
        let t1 = l.deadline().unwrap();
        let w1 = the_write(&l.handle(Event::Timer, t1, at(t1)));
        o.handle(
            Event::Watched(seen(at_seconds(w1.clone()), "2")),
            t1,
            at(t1),
        );
        let failed = t1 + ms(50);
        l.handle(Event::WriteDone(Err(ErrorKind::Failed)), failed, at(failed));
        // `l` reads again and renews at once; this one is answered.
        let t2 = l.deadline().unwrap();
        let a = l.handle(Event::Timer, t2, at(t2));
        assert!(matches!(a.as_slice(), [Action::Read { .. }]), "{a:?}");
        let w2 = the_write(&l.handle(
            Event::ReadDone(Ok(seen(at_seconds(w1.clone()), "2"))),
            t2,
            at(t2),
        ));
        l.handle(Event::WriteDone(Ok(ver("3"))), t2, at(t2));
        o.handle(
            Event::Watched(seen(at_seconds(w2.clone()), "3")),
            t2,
            at(t2),
        );
        assert_eq!(
            at(t1).as_second(),
            at(t2).as_second(),
            "both renewals landed within one wall-clock second"
        );
        assert_ne!(w1, w2);
        assert_eq!(
            at_seconds(w1),
            at_seconds(w2),
            "so `o` cannot tell them apart"
        );
        assert!(
            t2 - t1 > ms(500),
            "more apart than the margin: {:?}",
            t2 - t1
        );

        // Then `l` is cut off. It steps down a renew deadline after the send it counts from;
        // `o` takes over a lease after it first saw the record it still sees.
        let step_down = l.leading_until().unwrap();
        let takeover = o.deadline().unwrap();
        println!(
            "renewals at {t1:?} and {t2:?}: leader steps down at {step_down:?}, observer takes over at {takeover:?}"
        );
        assert!(
            step_down < takeover,
            "the leader would still lead when a whole-second observer takes over: step-down {step_down:?}, takeover {takeover:?}"
        );
        assert_eq!(
            step_down,
            t1 + ms(2500),
            "counted from the first of the two"
        );
        let a = o.handle(Event::Timer, takeover, at(takeover));
        assert!(
            a.iter().any(|a| matches!(a, Action::Update { .. })),
            "{a:?}"
        );
    }

    #[test]
    fn with_a_second_of_margin_a_renewal_counts_from_its_own_send() {
        // client-go's defaults: whole-second observers are at most a second behind, and the
        // margin is 5 s; crediting the earlier write would only shorten the term.
        let mut m = leader();
        let t1 = m.deadline().unwrap();
        let w1 = the_write(&m.handle(Event::Timer, t1, wall()));
        m.handle(
            Event::WriteDone(Err(ErrorKind::Timeout)),
            t1 + ms(10),
            wall(),
        );
        let t2 = m.deadline().unwrap();
        m.handle(Event::Timer, t2, wall());
        m.handle(Event::ReadDone(Ok(seen(w1, "2"))), t2, wall());
        m.handle(Event::WriteDone(Ok(ver("3"))), t2, wall());
        assert_eq!(m.leading_until(), Some(t2 + 10 * S));
    }

    #[test]
    fn an_unreadable_record_waits_for_the_longer_of_the_two_leases() {
        // The holder runs with 60 s leases; this candidate with 15 s.
        let mut long = other("x", 3, 0);
        long.lease_duration_seconds = 60;
        let (mut m, _) = observing(long);
        let a = m.handle(unreadable("2", false), S, wall());
        assert!(
            a.iter().all(|a| !matches!(a, Action::Update { .. })),
            "{a:?}"
        );
        // Past this candidate's own lease, the object still unchanged: no replacement yet.
        let mut t = S;
        let mut replaced_at = None;
        while t <= 70 * S {
            let a = m.handle(Event::Timer, t, wall());
            if a.iter().any(|a| matches!(a, Action::Read { .. })) {
                m.handle(unreadable("2", true), t, wall());
            }
            if a.iter()
                .any(|a| matches!(a, Action::ReplaceUnreadable { .. }))
            {
                replaced_at = Some(t);
                break;
            }
            t += S;
        }
        println!(
            "unreadable since 1 s (holder's lease 60 s, own 15 s): replaced at {replaced_at:?}"
        );
        assert_eq!(replaced_at, Some(61 * S));
    }

    #[test]
    fn tokens_strictly_increase_from_a_negative_count() {
        // A hand-edited annotation with a negative count; three takeovers in a row, each by a
        // candidate that saw only the record before it.
        let mut record = other("x", -5, 0);
        let mut tokens = Vec::new();
        for (i, id) in ["a", "b", "c"].iter().enumerate() {
            let mut m = Machine::new(*id, timing(), i as u64).unwrap();
            m.handle(Event::Start, Duration::ZERO, wall());
            m.handle(
                Event::ReadDone(Ok(seen(record.clone(), "1"))),
                Duration::ZERO,
                wall(),
            );
            let a = m.handle(Event::Timer, 15 * S, wall());
            record = the_write(&a);
            let a = m.handle(Event::WriteDone(Ok(ver("2"))), 15 * S, wall());
            let token = a.iter().find_map(|a| match a {
                Action::StartedLeading { token } => Some(*token),
                _ => None,
            });
            tokens.push((record.leader_transitions, token));
            record.holder_identity = (*id).into();
        }
        println!("leaderTransitions -5, then (written, token): {tokens:?}");
        assert_eq!(
            tokens,
            vec![
                (1, Some(FencingToken(1))),
                (2, Some(FencingToken(2))),
                (3, Some(FencingToken(3)))
            ]
        );
    }

    #[test]
    fn an_acquisition_refused_at_a_version_read_back_again_waits_a_retry_period() {
        // A backend that contradicts itself: every read shows version 3 unreadable, every
        // update at 3 is a conflict (a `MultiLock` with a corrupt side did this).
        let mut m = machine();
        m.handle(Event::Start, Duration::ZERO, wall());
        m.handle(unreadable("3", true), Duration::ZERO, wall());
        let mut t = 15 * S;
        let mut writes = 0;
        let mut a = m.handle(Event::Timer, t, wall());
        while t < 25 * S {
            if a.iter().any(|a| matches!(a, Action::Update { .. })) {
                writes += 1;
                t += ms(2);
                a = m.handle(Event::WriteDone(Err(ErrorKind::Conflict)), t, wall());
            } else if a.iter().any(|a| matches!(a, Action::Read { .. })) {
                t += ms(2);
                a = m.handle(unreadable("3", true), t, wall());
            } else {
                t = m.deadline().unwrap().max(t);
                a = m.handle(Event::Timer, t, wall());
            }
        }
        println!("writes in 10 s against a self-contradicting backend: {writes}");
        // One per retry period (2 s, jittered), not one per round trip.
        assert!((3..=6).contains(&writes), "{writes} writes in 10 s");
    }

    #[test]
    fn a_change_of_what_the_backend_summarises_restarts_the_wait() {
        let r = other("x", 2, 0);
        let (mut m, _) = observing(r.clone());
        let keyed = |k: &str, v: &str| Some(Versioned::new(r.clone(), ver(v)).with_change_key(k));
        m.handle(Event::Watched(keyed("a", "2")), 5 * S, wall());
        m.handle(Event::Watched(keyed("b", "3")), 10 * S, wall());
        quiet_read(&mut m, keyed("b", "3"));
        assert_eq!(
            m.deadline(),
            Some(25 * S),
            "the same record, another key: a renewal"
        );
        m.handle(Event::Watched(keyed("b", "4")), 20 * S, wall());
        assert_eq!(
            m.deadline(),
            Some(25 * S),
            "the same record and key: no renewal"
        );
    }

    #[test]
    fn a_partly_applied_renewal_reads_again_at_once_and_stays_our_own() {
        // A migration pair: the primary took the renewal, the secondary answered 409.
        let mut m = leader();
        let t1 = m.deadline().unwrap();
        let w1 = the_write(&m.handle(Event::Timer, t1, wall()));
        let a = m.handle(
            Event::WriteDone(Err(ErrorKind::Partial)),
            t1 + ms(5),
            wall(),
        );
        assert!(
            matches!(a.as_slice(), [Action::Read { .. }]),
            "read again at once, as after a conflict: {a:?}"
        );
        // Reading our own record back is no duplicate identity: we renew on it.
        let a = m.handle(Event::ReadDone(Ok(seen(w1, "2"))), t1 + ms(6), wall());
        assert!(matches!(a.as_slice(), [Action::Update { .. }]), "{a:?}");
        assert!(m.is_leader());
    }
}
