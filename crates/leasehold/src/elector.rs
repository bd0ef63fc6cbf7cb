//! The tokio driver: runs the [`Machine`] against a [`LockBackend`], fires callbacks and
//! publishes [`Status`] on a watch channel.

use crate::{Config, metrics::Metrics};
use futures_util::StreamExt as _;
use jiff::Timestamp;
use leasehold_core::{
    Action, ConfigError, Event, FailureKind, FencingToken, LastError, LockBackend, LockEvent,
    LockEventKind, Machine, Role, Status, StepDown, Timing,
    lock::{ErrorKind, LockError, WatchStream},
};
use std::{future::Future, pin::Pin, sync::Arc, time::Duration};
use tokio::{
    sync::watch,
    time::{Instant, timeout_at},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFuture};

/// Why an [`Elector`] could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The identity or timing is invalid.
    #[error("invalid election config")]
    Config(#[from] ConfigError),
    /// Another elector of this process already runs in the election on the same etcd session:
    /// both would put the same key (`<name>/<lease>`), and both would lead.
    #[error(
        "election `{name}` already has an elector on this etcd session: two candidates on one session share one key, and would both lead; use another session for the second"
    )]
    SessionTaken {
        /// The election's name.
        name: String,
    },
    /// More elections than one etcd `ElectionSet` indexes
    /// (`u32::MAX`): split them over several sets.
    #[error(
        "{count} elections are more than one election set holds ({}); split them over several sets",
        u32::MAX
    )]
    TooManyElections {
        /// How many were given.
        count: usize,
    },
}

/// A `Result` with this module's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// The leadership of one term, handed to the started-leading callback.
///
/// Replaces the `context.Context` client-go passes to `OnStartedLeading`: its token is cancelled
/// when the term ends, *before* the lease can expire for anyone else (renew deadline < lease
/// duration), and it carries the term's [`FencingToken`] for downstream writes.
#[derive(Clone, Debug)]
pub struct Leadership {
    token: CancellationToken,
    fencing_token: FencingToken,
    /// The record's `leaderTransitions` in this term (the compat locker's release compares it).
    // Read only by the compat `LeaseLocker`, which needs the Kubernetes locks.
    #[cfg_attr(not(feature = "kube"), allow(dead_code))]
    transitions: i32,
    identity: Arc<str>,
    valid_until: watch::Receiver<Deadline>,
}

/// When a term ends unless a renewal succeeds first, on two clocks.
///
/// [`at`](Self::at) is on tokio's clock (`CLOCK_MONOTONIC`), which stops while the host is
/// suspended; other hosts' clocks do not, so a leader that sleeps through a suspend wakes up
/// past its real deadline. [`boottime`](Self::boottime) is the same moment on Linux's
/// `CLOCK_BOOTTIME`, which keeps counting through a suspend and is shared by every process: a
/// separate process (the CLI's watchdog) holds the term to it. It is the boot-clock reading
/// taken when the counted renewal was *sent*, plus the renew deadline, so neither a suspend nor
/// a stall between the send and the answer can stretch it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Deadline {
    /// On tokio's clock.
    pub at: Instant,
    /// On `CLOCK_BOOTTIME`, since boot; `None` where the platform has no such clock.
    pub boottime: Option<Duration>,
}

// === impl Leadership ===

impl Leadership {
    /// A term of an election in an [`ElectionSet`](crate::backend::etcd::ElectionSet).
    #[cfg(feature = "etcd")]
    pub(crate) fn for_set(
        token: CancellationToken,
        fencing_token: FencingToken,
        identity: Arc<str>,
        valid_until: watch::Receiver<Deadline>,
    ) -> Self {
        Self {
            token,
            fencing_token,
            transitions: 0,
            identity,
            valid_until,
        }
    }

    /// The term's fencing token: attach it to every write to a fenced store.
    pub fn fencing_token(&self) -> FencingToken {
        self.fencing_token
    }

    /// This candidate's identity.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// The `leaderTransitions` of the record this term writes.
    #[cfg(feature = "kube")]
    pub(crate) fn transitions(&self) -> i32 {
        self.transitions
    }

    /// A token cancelled when the term ends (step-down, loss, or shutdown).
    ///
    /// Each call returns a new child of the term's own token, so it is yours to cancel: doing
    /// so stops the work you tied to it, not the term. The elector keeps leading, and
    /// [`lost`](Self::lost) and [`is_lost`](Self::is_lost) keep telling the truth about the
    /// term. To give up leadership, cancel the token passed to [`Elector::run`].
    pub fn token(&self) -> CancellationToken {
        self.token.child_token()
    }

    /// Completes when the term ends.
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it loses nothing.
    pub fn lost(&self) -> WaitForCancellationFuture<'_> {
        self.token.cancelled()
    }

    /// Whether the term has ended.
    pub fn is_lost(&self) -> bool {
        self.token.is_cancelled()
    }

    /// The time at which this term ends unless a renewal succeeds first: the send time of the
    /// last successful renewal plus the renew deadline. It moves forward with every renewal.
    /// Work that must not outlive the term (a child process, a fenced write in flight) can use it
    /// as a hard deadline that holds even if the election task is stalled.
    pub fn valid_until(&self) -> Instant {
        self.valid_until.borrow().at
    }

    /// The term's deadline on both clocks (see [`Deadline`]).
    pub fn deadline(&self) -> Deadline {
        *self.valid_until.borrow()
    }

    /// A receiver of the term's [`Deadline`] as it moves.
    pub fn subscribe_deadline(&self) -> watch::Receiver<Deadline> {
        self.valid_until.clone()
    }
}

type StartedFn = Box<dyn FnMut(Leadership) + Send>;
type WorkFn = Box<dyn FnMut(Leadership) -> Pin<Box<dyn Future<Output = ()> + Send>> + Send>;
type StoppedFn = Box<dyn FnMut() + Send>;
type NewLeaderFn = Box<dyn FnMut(&str) + Send>;

/// A cheap, cloneable view of an elector: its status, and the current term.
///
/// Replaces the `IsLeader`/`GetLeader` methods of Go electors. A term can be had from it
/// without a callback: [`acquired`](Self::acquired) waits for one, and
/// [`leadership`](Self::leadership) returns the current one.
#[derive(Clone, Debug)]
pub struct ElectorHandle {
    rx: watch::Receiver<Status>,
    metrics: Arc<Metrics>,
    /// The current term's deadline on tokio's clock; `None` while not leading.
    term_until: watch::Receiver<Option<Instant>>,
    /// The current term; `None` while not leading.
    term: watch::Receiver<Option<Leadership>>,
    /// Step-down requests, to the run loop.
    step_down: Arc<watch::Sender<StepDownRequest>>,
    /// The backend stores the handover mark a transfer needs.
    carries_handover: bool,
    /// The election hands over only to the candidate next in line (etcd's queue).
    next_in_line_only: bool,
    /// The lock, for errors.
    lock: Arc<str>,
}

/// The latest request that moves leadership, with a counter, so that two alike requests are
/// two requests.
#[derive(Clone, Debug, Default)]
struct StepDownRequest {
    seq: u64,
    what: Request,
}

#[derive(Clone, Debug, Default)]
enum Request {
    /// End the hold-off ([`ElectorHandle::resume`]).
    #[default]
    Resume,
    /// [`ElectorHandle::step_down`].
    StepDown(Duration),
    /// [`ElectorHandle::transfer`].
    Transfer(String),
}

/// Why [`ElectorHandle::transfer`] refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransferError {
    /// This candidate does not lead.
    #[error("not leading: only the leader can hand over")]
    NotLeading,
    /// The target is this candidate itself, or empty.
    #[error("cannot hand over to `{0}`: name another candidate")]
    BadTarget(String),
    /// The backend does not store the handover mark.
    #[error("{0} cannot carry a handover mark; use step-down")]
    Unsupported(String),
    /// On etcd, leadership passes only to the candidate queued right after the leader.
    #[error("cannot hand over to `{to}`: on etcd only the candidate next in line can take over ({})", next_is(.next))]
    NotNextInLine {
        /// The target asked for.
        to: String,
        /// The candidate next in line, if any.
        next: Option<String>,
    },
}

fn next_is(next: &Option<String>) -> String {
    match next {
        Some(n) => format!("that is `{n}`"),
        None => "nobody is queued after this one".to_owned(),
    }
}

// === impl ElectorHandle ===

impl ElectorHandle {
    /// Whether this candidate leads right now: the status says so *and* the term's deadline
    /// ([`Leadership::valid_until`]) has not passed. The deadline holds even when the election
    /// task is stalled and has not published its step-down, so a stale status cannot make
    /// this answer "leader" after others may have taken over.
    #[doc(alias = "IsLeader")]
    pub fn is_leader(&self) -> bool {
        self.rx.borrow().role == Role::Leader
            && self
                .term_until
                .borrow()
                .is_some_and(|until| Instant::now() < until)
    }

    /// The current holder as last observed; empty before the first observation and while the
    /// lock is released.
    #[doc(alias = "GetLeader")]
    pub fn leader(&self) -> String {
        self.rx.borrow().leader.clone()
    }

    /// The current holder as last observed: "" before the first observation (and while the lock
    /// is released). The same as [`leader`](Self::leader), by the Go electors' name.
    #[doc(alias = "GetLeader")]
    pub fn get_leader(&self) -> String {
        self.leader()
    }

    /// The elector's counters (renew latency, errors by kind, terms, leaderless time).
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// A receiver of every status change.
    pub fn subscribe(&self) -> watch::Receiver<Status> {
        self.rx.clone()
    }

    /// The status now.
    pub fn status(&self) -> Status {
        self.rx.borrow().clone()
    }

    /// The current term, if this candidate leads: the same [`Leadership`] the started-leading
    /// callback receives. `None` while standing by, and once the term has ended.
    pub fn leadership(&self) -> Option<Leadership> {
        self.term.borrow().clone().filter(|l| !l.is_lost())
    }

    /// A receiver of the current term: `Some` from the moment this candidate starts leading,
    /// `None` from the moment it stops. For work that starts and stops with each term without
    /// a callback (see [`acquired`](Self::acquired) for the next term alone).
    pub fn watch_leadership(&self) -> watch::Receiver<Option<Leadership>> {
        self.term.clone()
    }

    /// Steps down if leading, and does not contend again before `hold_off` has passed: the
    /// term ends (its [`Leadership`] token is cancelled, the stopped-leading callback runs),
    /// the work of [`run_while_leading`](Elector::run_while_leading) drains, and then the lock
    /// is released, so that a standby takes over at once rather than after a lease duration.
    /// The elector keeps running, as a standby. A standby asked to step down sits out the
    /// hold-off all the same (to keep a node being drained from taking over, say).
    ///
    /// Returns whether this candidate was leading when asked. A request made before the
    /// elector runs applies when it starts (it begins by sitting out); one made after it has
    /// finished does nothing.
    ///
    /// A hold-off shorter than the others' reaction time (a retry period for client-go
    /// candidates, which poll) may let this candidate take the lock straight back: this one
    /// learns of its own release first.
    ///
    /// ```no_run
    /// # fn f(handle: leasehold::ElectorHandle) {
    /// // Before draining this node: hand over, and keep out for a minute.
    /// handle.step_down(std::time::Duration::from_secs(60));
    /// # }
    /// ```
    #[doc(alias = "Release")]
    pub fn step_down(&self, hold_off: Duration) -> bool {
        let leading = self.leadership().is_some();
        self.step_down.send_modify(|r| {
            r.seq += 1;
            r.what = Request::StepDown(hold_off);
        });
        leading
    }

    /// Hands leadership to the candidate `to` (a directed transfer): this leader's term ends
    /// and its work drains, then it writes the lock with `to` as holder, the next fencing token
    /// and a handover mark, and sits out a lease duration. Every other candidate, client-go's
    /// too, sees a held lock and waits; `to`, watching, takes the term within milliseconds.
    /// If `to` is not running, or does not take over, the record expires a lease duration
    /// after it was written and an ordinary election follows.
    ///
    /// # Errors
    /// [`TransferError`]: not leading, a target that is this candidate or empty, or a backend
    /// that cannot store the mark (every backend of this crate can; a backend of your own
    /// says so with [`LockBackend::carries_handover`](leasehold_core::LockBackend::carries_handover)).
    pub fn transfer(&self, to: &str) -> Result<(), TransferError> {
        let me = self.leadership().map(|l| l.identity().to_owned());
        let Some(me) = me else {
            return Err(TransferError::NotLeading);
        };
        if to.is_empty() || to == me {
            return Err(TransferError::BadTarget(to.to_owned()));
        }
        if !self.carries_handover {
            return Err(TransferError::Unsupported(self.lock.to_string()));
        }
        if self.next_in_line_only {
            let next = self.rx.borrow().next_in_line.clone();
            if next.as_deref() != Some(to) {
                return Err(TransferError::NotNextInLine {
                    to: to.to_owned(),
                    next,
                });
            }
        }
        self.step_down.send_modify(|r| {
            r.seq += 1;
            r.what = Request::Transfer(to.to_owned());
        });
        Ok(())
    }

    /// Ends the hold-off of an earlier [`step_down`](Self::step_down) now: the candidate
    /// contends again at once (a health check that passes again, say).
    pub fn resume(&self) {
        self.step_down.send_modify(|r| {
            r.seq += 1;
            r.what = Request::Resume;
        });
    }

    /// Waits until this candidate leads and returns the term; at once if it leads already.
    /// `None` once the elector has finished without leading again.
    ///
    /// ```no_run
    /// # async fn f(handle: leasehold::ElectorHandle) {
    /// while let Some(term) = handle.acquired().await {
    ///     // act until the term ends
    ///     term.lost().await;
    /// }
    /// # }
    /// ```
    ///
    /// # Cancel safety
    /// Cancel safe: dropping it loses no term; the next call returns the current one.
    pub async fn acquired(&self) -> Option<Leadership> {
        let mut rx = self.term.clone();
        let term = rx
            .wait_for(|t| t.as_ref().is_some_and(|l| !l.is_lost()))
            .await
            .ok()?;
        term.clone()
    }
}

/// One candidate in one election.
///
/// Replaces client-go's `leaderelection.LeaderElector` (`NewLeaderElector` + `Run`). Build it
/// with [`Elector::new`], register callbacks, take a [`handle`](Self::handle) for status, then
/// [`run`](Self::run) it until a cancellation token fires. After losing leadership it goes back
/// to standby and contends again; to exit instead, cancel from the stopped-leading callback.
#[doc(alias = "LeaderElector")]
pub struct Elector<B> {
    backend: Arc<B>,
    /// The record machine, for lock backends only (boxed: over a KiB, and an etcd election,
    /// of which a process may hold 100,000, has none).
    machine: Option<Box<Machine>>,
    timing: Timing,
    identity: Arc<str>,
    tx: watch::Sender<Status>,
    on_started: Option<StartedFn>,
    on_stopped: Option<StoppedFn>,
    on_new_leader: Option<NewLeaderFn>,
    clock_offset: jiff::SignedDuration,
    metrics: Arc<Metrics>,
    enabled: bool,
    boot_clock: fn() -> Option<Duration>,
    /// The current term's deadline, shared with handles for [`ElectorHandle::is_leader`].
    term_until: watch::Sender<Option<Instant>>,
    /// The current term, shared with handles for [`ElectorHandle::leadership`].
    term: watch::Sender<Option<Leadership>>,
    /// Step-down requests from handles ([`ElectorHandle::step_down`]).
    step_down: Arc<watch::Sender<StepDownRequest>>,
    /// The leader work of [`run_while_leading`](Self::run_while_leading), started each term.
    work: Option<WorkFn>,
    /// This elector's place in its election on a shared etcd session, held while it lives.
    #[cfg(feature = "etcd")]
    _claim: Option<crate::backend::etcd::Claim>,
}

/// What an [`Elector`] elects on: every [`LockBackend`] (a record compare-and-swapped by all
/// candidates: a file, a Lease, ...), or, with the feature `etcd`, an etcd election
/// (`backend::etcd::EtcdElection`), where candidates queue by create
/// revision as etcd's own clients do.
pub trait Election: Send + Sync + 'static {
    /// What it is, for logs and errors (`lease default/my-app`, `etcd election my-app`).
    fn describe(&self) -> String;
    /// Whether a directed transfer ([`ElectorHandle::transfer`]) can be carried.
    fn carries_handover(&self) -> bool;
    /// Whether a transfer can go only to the candidate next in line (etcd's queue, where
    /// leadership passes in the order candidates queued), as [`Status::next_in_line`] names it.
    fn hands_over_to_next_in_line_only(&self) -> bool {
        false
    }
    /// How the elector drives it.
    #[doc(hidden)]
    fn engine(self: Arc<Self>) -> Engine;
}

/// How an [`Election`] is driven: not for use outside this crate.
#[doc(hidden)]
pub enum Engine {
    /// The record machine over a lock backend.
    Lock(Arc<dyn LockBackend>),
    /// The election queue on etcd (shared: its client is several KiB).
    #[cfg(feature = "etcd")]
    Etcd(Arc<crate::backend::etcd::EtcdElection>),
}

impl<B: LockBackend> Election for B {
    fn describe(&self) -> String {
        LockBackend::describe(self)
    }
    fn carries_handover(&self) -> bool {
        LockBackend::carries_handover(self)
    }
    fn engine(self: Arc<Self>) -> Engine {
        Engine::Lock(self)
    }
}

/// The state of the current term (and of the last one's work) while an elector runs.
#[derive(Default)]
struct TermRun {
    /// A guard, not a bare token: if the run's future is dropped mid-term (a `select!` that
    /// finished elsewhere, a panic in a callback), renewals stop, so the term must end too.
    leadership: Option<tokio_util::sync::DropGuard>,
    valid_until: Option<watch::Sender<Deadline>>,
    /// The leader work of `run_while_leading`: the task of the current or last term.
    running: Option<tokio::task::JoinHandle<()>>,
    /// When, and in which term, the work was told to stop.
    told_to_stop: Option<(FencingToken, Instant)>,
    /// A `Drained` to deliver next.
    drained: bool,
}

// === impl TermRun ===

impl TermRun {
    /// The work's task returned with `r`. True if its term had ended (it has drained); false
    /// if it ended on its own while leading: the term's token is cancelled, and the caller
    /// ends the run, as a failed runnable ends a controller-runtime manager.
    fn work_returned(&mut self, r: &Result<(), tokio::task::JoinError>, describe: &str) -> bool {
        self.running = None;
        if let Some(e) = r.as_ref().err().filter(|e| e.is_panic()) {
            tracing::error!(lock = %describe, error = %e, "leader work panicked");
        }
        if let Some((token, at)) = self.told_to_stop.take() {
            tracing::debug!(lock = %describe, fencing_token = %token, took = ?at.elapsed(), "leader work returned after its term");
            return true;
        }
        tracing::warn!(lock = %describe, "leader work returned while leading; stepping down and releasing");
        drop(self.leadership.take());
        false
    }
}

/// A request in flight: the event it ends with, and the failure if it failed.
type Pending = Pin<Box<dyn Future<Output = (Event, Option<LastError>)> + Send>>;

// === impl Elector ===

impl<B: Election> Elector<B> {
    /// An elector for `identity` on `backend` with `timing`: the same as
    /// [`with_config`](Self::with_config) with `Config::new(identity).timing(timing)`.
    ///
    /// # Errors
    /// [`Error::Config`] when the identity is empty or the timing breaks client-go's rules.
    pub fn new(backend: B, identity: impl Into<String>, timing: Timing) -> Result<Self> {
        Self::with_config(backend, Config::new(identity).timing(timing))
    }

    /// An elector on `backend` configured by `config`.
    ///
    /// # Errors
    /// [`Error::Config`] when the identity is empty or the timing breaks client-go's rules.
    pub fn with_config(backend: B, config: Config) -> Result<Self> {
        let Config {
            identity,
            timing,
            enabled,
            use_observed_time,
        } = config;
        let seed = seed_from(&identity);
        let machine = Machine::new(identity.clone(), timing.clone(), seed)?
            .with_record_time_expiry(!use_observed_time);
        let backend = Arc::new(backend);
        // One arm without the feature `etcd`.
        #[cfg_attr(not(feature = "etcd"), expect(irrefutable_let_patterns))]
        let machine = if let Engine::Lock(_) = Arc::clone(&backend).engine() {
            Some(Box::new(machine))
        } else {
            None
        };
        #[cfg(feature = "etcd")]
        let claim = match Arc::clone(&backend).engine() {
            Engine::Etcd(e) => e.claim().ok_or_else(|| Error::SessionTaken {
                name: e.name().to_owned(),
            })?,
            Engine::Lock(_) => None,
        };
        let (tx, _) = watch::channel(Status::default());
        Ok(Self {
            #[cfg(feature = "etcd")]
            _claim: claim,
            backend,
            machine,
            timing,
            identity: identity.into(),
            tx,
            on_started: None,
            on_stopped: None,
            on_new_leader: None,
            clock_offset: jiff::SignedDuration::ZERO,
            metrics: Arc::default(),
            enabled,
            boot_clock: boottime,
            term_until: watch::channel(None).0,
            term: watch::channel(None).0,
            step_down: Arc::new(watch::channel(StepDownRequest::default()).0),
            work: None,
        })
    }

    /// This candidate's identity (client-go's `resourcelock.Interface.Identity`; in leasehold
    /// the identity belongs to the candidate, not to the lock).
    #[doc(alias = "Identity")]
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Called when this candidate starts leading. It runs on the election task: spawn anything
    /// long-running and stop it when [`Leadership::lost`] completes.
    #[doc(alias = "OnStartedLeading")]
    #[must_use]
    pub fn on_started_leading(mut self, f: impl FnMut(Leadership) + Send + 'static) -> Self {
        self.on_started = Some(Box::new(f));
        self
    }

    /// Called when this candidate stops leading, after the leadership token is cancelled.
    #[doc(alias = "OnStoppedLeading")]
    #[must_use]
    pub fn on_stopped_leading(mut self, f: impl FnMut() + Send + 'static) -> Self {
        self.on_stopped = Some(Box::new(f));
        self
    }

    /// Called once per change of holder (including this candidate, and "" for a release).
    #[doc(alias = "OnNewLeader")]
    #[must_use]
    pub fn on_new_leader(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_new_leader = Some(Box::new(f));
        self
    }

    /// Shifts the wall-clock time written into records. Only for fault-injection tests, to show
    /// that a candidate whose clock is off cannot affect expiry.
    #[doc(hidden)]
    #[must_use]
    pub fn with_clock_offset(mut self, offset: jiff::SignedDuration) -> Self {
        self.clock_offset = offset;
        self
    }

    /// Replaces the `CLOCK_BOOTTIME` reader behind [`Deadline::boottime`]. Only for tests, to
    /// show that a host suspend between a renewal's send and its answer cannot stretch the
    /// deadline.
    #[doc(hidden)]
    #[must_use]
    pub fn with_boot_clock(mut self, clock: fn() -> Option<Duration>) -> Self {
        self.boot_clock = clock;
        self
    }

    /// A view of the status and the current term, usable while [`run`](Self::run) runs.
    pub fn handle(&self) -> ElectorHandle {
        ElectorHandle {
            rx: self.tx.subscribe(),
            metrics: Arc::clone(&self.metrics),
            term_until: self.term_until.subscribe(),
            term: self.term.subscribe(),
            step_down: Arc::clone(&self.step_down),
            carries_handover: self.backend.carries_handover(),
            next_in_line_only: self.backend.hands_over_to_next_in_line_only(),
            lock: self.backend.describe().into(),
        }
    }

    /// Runs the elector on its own task until `cancel` fires, and returns its handle and the
    /// task's join handle.
    ///
    /// This is the way to run an elector beside other work in one `tokio::select!`: the
    /// election lives on its own task, so whichever branch finishes first cannot drop it
    /// mid-term (which would end the term without releasing the lock). To stop, cancel
    /// `cancel` and await the join handle: the leader's work is told to stop, then the lock is
    /// released.
    ///
    /// ```no_run
    /// # async fn f(elector: leasehold::Elector<leasehold::backend::file::FileLock>) {
    /// let cancel = tokio_util::sync::CancellationToken::new();
    /// let (handle, task) = elector.spawn(cancel.clone());
    /// while let Some(term) = handle.acquired().await {
    ///     tokio::select! {
    ///         () = term.lost() => {}                    // the term ended: wait for the next
    ///         _ = tokio::signal::ctrl_c() => break,     // shut down
    ///     }
    /// }
    /// cancel.cancel();
    /// task.await.expect("the elector does not panic");
    /// # }
    /// ```
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn(self, cancel: CancellationToken) -> (ElectorHandle, tokio::task::JoinHandle<()>) {
        let handle = self.handle();
        (handle, tokio::spawn(self.run(cancel)))
    }

    /// The backend this elector runs on.
    pub fn backend(&self) -> &B {
        &self.backend
    }

    /// The durations this elector runs with.
    pub fn timing(&self) -> &Timing {
        &self.timing
    }

    /// Contends until `cancel` fires, and runs `work` while leading: started on each
    /// acquisition, cancelled and awaited when the term ends (loss, step-down or shutdown), and
    /// only then is the lock released or taken again (drain, then release).
    ///
    /// `work` gets the term's [`Leadership`]: stop when [`Leadership::lost`] completes. It is
    /// told to stop at the latest when the term reaches its renew deadline, before the lease
    /// can expire for anyone else; renewals stop then, so the record stays this candidate's,
    /// unrenewed, while the work winds down. A work that has not returned by the end of its term
    /// (or within half the safety margin, `lease_duration − renew_deadline`, of being told to
    /// stop, if that is later) is the work's bug: it is logged with the term's token and counted
    /// in [`Metrics::work_overruns`](crate::metrics::Metrics::work_overruns), and the lock is
    /// left to expire rather than released under it. The next term starts only after it has
    /// returned, so two terms' work never run at once.
    ///
    /// A work that returns on its own while the term lasts ends the run, as a failed runnable
    /// ends a controller-runtime manager: the elector releases the lock and returns, and the
    /// program decides what next (usually exit, and be restarted).
    ///
    /// ```no_run
    /// # async fn f(elector: leasehold::Elector<leasehold::backend::file::FileLock>) {
    /// let cancel = tokio_util::sync::CancellationToken::new();
    /// elector
    ///     .run_while_leading(cancel, |term| async move {
    ///         tokio::select! {
    ///             () = term.lost() => {}                  // the term ended: return promptly
    ///             () = reconcile_forever(term.fencing_token()) => {}
    ///         }
    ///     })
    ///     .await;
    /// # }
    /// # async fn reconcile_forever(_: leasehold::FencingToken) {}
    /// ```
    ///
    /// # Cancel safety
    /// As [`run`](Self::run): cancel through `cancel`.
    #[doc(alias = "NeedLeaderElection")]
    #[doc(alias = "LeaderElectionReleaseOnCancel")]
    pub fn run_while_leading<F, Fut>(
        mut self,
        cancel: CancellationToken,
        mut work: F,
    ) -> impl Future<Output = ()> + Send + 'static
    where
        F: FnMut(Leadership) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.work = Some(Box::new(move |term| Box::pin(work(term))));
        self.machine = self.machine.take().map(|m| Box::new(m.with_drain(true)));
        self.run(cancel)
    }

    /// Contends until `cancel` fires; then steps down, releases (if configured) and returns.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropping the future (or a panic in a callback) ends the term at once,
    /// since the leadership token is cancelled when the future is dropped, so work guarded by it
    /// stops; but it skips the release, leaving the lease to expire. Cancel through `cancel`
    /// instead.
    #[doc(alias = "Run")]
    #[doc(alias = "RunOrDie")]
    pub fn run(mut self, cancel: CancellationToken) -> impl Future<Output = ()> + Send + 'static {
        // The engine's loop on the heap, at its own size, and nothing else: a process in
        // 100,000 elections on etcd holds 100,000 of these.
        let run: Pin<Box<dyn Future<Output = ()> + Send>> = if !self.enabled {
            Box::pin(self.run_disabled(cancel))
        } else {
            match Arc::clone(&self.backend).engine() {
                Engine::Lock(b) => {
                    let machine = self.machine.take().expect(
                        "an elector on a lock backend has its machine (made in with_config)",
                    );
                    Box::pin(self.run_lock(b, *machine, cancel))
                }
                #[cfg(feature = "etcd")]
                Engine::Etcd(e) => Box::pin(self.run_queue(e, cancel)),
            }
        };
        run
    }

    /// The record machine's loop, over a lock backend.
    async fn run_lock(
        mut self,
        backend: Arc<dyn LockBackend>,
        mut machine: Machine,
        cancel: CancellationToken,
    ) {
        let origin = Instant::now();
        let mut pending: Option<Pending> = None;
        let mut watch: Option<WatchStream> = None;
        // A guard, not a bare token: if this future is dropped mid-term (a `select!` that
        // finished elsewhere, a panic in a callback), renewals stop, so the term must end too.
        let mut run = TermRun::default();
        // The boot-clock time of each recent write's send, by the machine's tick: the term's
        // boot-clock deadline counts from the send the machine counts from.
        let mut sends: std::collections::VecDeque<(Duration, Option<Duration>)> =
            std::collections::VecDeque::with_capacity(SENDS_KEPT);
        let mut cancel_sent = false;
        // The leader work of `run_while_leading`: the task of the current or last term, when
        // and in which term it was told to stop, and a `Drained` to deliver next.
        let mut last_error: Option<LastError> = None;
        // The failure last warned about, and whether a write failed: a read that succeeds says
        // nothing about writes (a missing directory, RBAC without `update`), so only a write
        // ends a write's warning. Otherwise each read/write pair would log "failed" and
        // "reachable again" once per retry.
        let mut warned: Option<(String, bool)> = None;
        let mut last_watch_error: Option<String> = None;
        // A duplicate identity stays reported until none has been seen for two lease durations
        // (the machine repeats the report once per lease duration while it lasts).
        let mut duplicate: Option<(LastError, Instant)> = None;
        let describe = backend.describe();
        let object: Arc<str> = describe.as_str().into();

        let mut event = Some(Event::Start);
        let mut cancelled = std::pin::pin!(cancel.cancelled());
        let mut step_downs = self.step_down_requests();
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(origin));
        loop {
            if let Some(ev) = event.take() {
                let now = Instant::now();
                let boot_now = (self.boot_clock)();
                let wall = Timestamp::now()
                    .checked_add(self.clock_offset)
                    .unwrap_or_else(|_| Timestamp::now());
                if let Event::ReadDone(Ok(_)) | Event::Watched(_) | Event::WriteDone(Ok(_)) = &ev {
                    last_error = None;
                    let wrote = matches!(ev, Event::WriteDone(_));
                    if warned.as_ref().is_some_and(|(_, write)| wrote || !write) {
                        warned = None;
                        tracing::info!(lock = %describe, "lock requests succeed again");
                    }
                }
                // Every event and action, for explaining a failover afterwards from the log.
                tracing::trace!(lock = %describe, identity = %self.identity, tick = ?(now - origin), event = ?ev, "machine event");
                let actions = machine.handle(ev, now - origin, wall);
                if !actions.is_empty() {
                    tracing::trace!(lock = %describe, identity = %self.identity, ?actions, "machine actions");
                }
                if actions
                    .iter()
                    .any(|a| matches!(a, Action::Update { .. } | Action::Create { .. }))
                {
                    // Sends before the one the term counts from are never looked up again.
                    if let Some(until) = machine.leading_until() {
                        let counted = until.saturating_sub(machine.timing().renew_deadline);
                        while sends.front().is_some_and(|(tick, _)| *tick < counted) {
                            sends.pop_front();
                        }
                    }
                    if sends.len() == SENDS_KEPT {
                        sends.pop_front();
                    }
                    sends.push_back((now - origin, boot_now));
                }
                let mut finished = false;
                for action in actions {
                    match action {
                        Action::Read { deadline } => {
                            pending =
                                Some(read(&backend, &self.metrics, &object, origin + deadline));
                        }
                        Action::Create { record, deadline } => {
                            let (b, m, object) = (
                                Arc::clone(&backend),
                                Arc::clone(&self.metrics),
                                Arc::clone(&object),
                            );
                            let at = origin + deadline;
                            pending = Some(Box::pin(async move {
                                let r = timeout_at(at, b.create(&record)).await;
                                write_event(r, "create", &object, &m, None)
                            }));
                        }
                        Action::Update {
                            record,
                            version,
                            deadline,
                        } => {
                            let (b, m, object) = (
                                Arc::clone(&backend),
                                Arc::clone(&self.metrics),
                                Arc::clone(&object),
                            );
                            let at = origin + deadline;
                            // A renewal: the record is ours and we lead.
                            let renewal = machine.is_leader().then(Instant::now);
                            pending = Some(Box::pin(async move {
                                let r = timeout_at(at, b.update(&record, &version)).await;
                                write_event(r, "update", &object, &m, renewal)
                            }));
                        }
                        Action::Abandon => pending = None,
                        Action::Watch { from } => {
                            watch = Some(backend.watch(from.as_ref()));
                        }
                        Action::Unwatch => watch = None,
                        Action::StartedLeading { token } => {
                            self.record_event(&backend, LockEventKind::BecameLeader, token);
                            let until = machine.leading_until().unwrap_or_default();
                            let deadline = self.deadline(origin, until, &sends);
                            let transitions = machine.leading_transitions().unwrap_or_default();
                            self.start_term(
                                &mut run,
                                &cancel,
                                token,
                                transitions,
                                deadline,
                                &describe,
                            );
                        }
                        Action::StoppedLeading { token, reason } => {
                            self.stop_term(&mut run, token, &reason, &describe);
                            self.record_event(&backend, LockEventKind::StoppedLeading, token);
                        }
                        Action::NewLeader { identity } => self.new_leader(&identity, &describe),
                        Action::DuplicateIdentity { record } => {
                            let msg = format!(
                                "another candidate is writing the lock under this identity `{}` (renew time {}): two processes share one identity; give each a unique one",
                                self.identity,
                                record.renew_time.map(|t| t.to_string()).unwrap_or_default()
                            );
                            tracing::error!(lock = %describe, "{msg}");
                            duplicate = Some((
                                LastError::new(FailureKind::DuplicateIdentity, &*object, msg),
                                Instant::now(),
                            ));
                        }
                        Action::ReplaceUnreadable {
                            version,
                            unchanged_for,
                        } => {
                            tracing::warn!(lock = %describe, %version, ?unchanged_for, "replacing a record that cannot be read: unchanged for a full lease duration, so no one is renewing it");
                        }
                        Action::WorkOverran { token } => {
                            self.metrics.work_overran();
                            let ago = run
                                .told_to_stop
                                .map(|(_, at)| at.elapsed())
                                .unwrap_or_default();
                            tracing::error!(lock = %describe, fencing_token = %token, told_to_stop_ago = ?ago, "leader work has not returned after its term ended: it may act while another candidate leads; the lock is left to expire, not released under it");
                        }
                        Action::WatchStale { silent_for } => {
                            tracing::warn!(lock = %describe, ?silent_for, "the watch delivered nothing while the lock changed: it is stuck; replacing it");
                        }
                        Action::Finished => finished = true,
                    }
                }
                if let (Some(tx), Some(until)) = (&run.valid_until, machine.leading_until()) {
                    let moved = tx.send_if_modified(|v| {
                        if v.at == origin + until {
                            return false;
                        }
                        *v = self.deadline(origin, until, &sends);
                        true
                    });
                    if moved {
                        self.term_until.send_replace(Some(origin + until));
                    }
                }
                let lease = machine.timing().lease_duration;
                duplicate = duplicate.take().filter(|(_, at)| at.elapsed() < lease * 2);
                let error = last_error
                    .as_ref()
                    .or_else(|| duplicate.as_ref().map(|(e, _)| e));
                // Waking no one costs a pass over the channel's waiter lists all the same; with
                // no handle to this elector, store the status silently (a later subscriber
                // still reads it).
                let listened = self.tx.receiver_count() > 0;
                let machine = &machine;
                let mut leaderless = None;
                self.tx.send_if_modified(|s| {
                    let mut changed = machine.update_status(s);
                    if s.last_error.as_ref() != error {
                        s.last_error = error.cloned();
                        changed = true;
                    }
                    leaderless = s
                        .observed
                        .then(|| s.leader.is_empty() || s.leader == crate::backend::UNKNOWN_LEADER);
                    changed && listened
                });
                if let Some(leaderless) = leaderless {
                    self.metrics.set_leaderless(leaderless, Instant::now());
                }
                if finished {
                    if let Some(task) = run.running.take() {
                        await_work(task, machine.timing().lease_duration, &describe).await;
                    }
                    return;
                }
            }

            let timer_at = machine.deadline().map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |d| on_shared_grid(origin + d, machine.timer_slack()),
            );

            // One timer for the whole run, moved rather than replaced: dropping a timer and
            // registering a new one on every pass is most of a pass's cost at thousands of
            // elections per process.
            if sleep.deadline() != timer_at {
                sleep.as_mut().reset(timer_at);
            }
            tokio::select! {
                biased;
                () = std::future::ready(()), if run.drained => {
                    run.drained = false;
                    event = Some(Event::Drained);
                }
                _ = &mut cancelled, if !cancel_sent => {
                    cancel_sent = true;
                    // Stop acting first, whatever the machine is waiting for.
                    drop(run.leadership.take());
                    event = Some(Event::Cancel);
                }
                Ok(()) = step_downs.changed(), if !cancel_sent => {
                    let what = step_downs.borrow_and_update().what.clone();
                    tracing::debug!(lock = %describe, ?what, "leadership request");
                    event = Some(match what {
                        Request::StepDown(hold_off) => Event::StepDown { hold_off },
                        Request::Resume => Event::Resume,
                        Request::Transfer(to) => {
                            tracing::info!(lock = %describe, to = %to, "handing over");
                            Event::Transfer { to }
                        }
                    });
                }
                (ev, error) = async { pending.as_mut().expect("guarded").await }, if pending.is_some() => {
                    pending = None;
                    if let Some(failure) = error {
                        let msg = &failure.message;
                        // One line per kind of failure, not one per retry.
                        if matches!(ev, Event::WriteDone(Err(ErrorKind::Conflict))) {
                            tracing::debug!(lock = %describe, error = %msg, "conflict; reading again");
                        } else {
                            if warned.as_ref().is_some_and(|(m, _)| m == msg) {
                                tracing::debug!(lock = %describe, error = %msg, "lock request failed again");
                            } else {
                                tracing::warn!(lock = %describe, error = %msg, "lock request failed; retrying");
                                warned = Some((msg.clone(), matches!(ev, Event::WriteDone(_))));
                            }
                            last_error = Some(failure);
                        }
                    }
                    event = Some(ev);
                }
                _ = &mut sleep => {
                    event = Some(Event::Timer);
                }
                r = async { run.running.as_mut().expect("guarded").await }, if run.running.is_some() => {
                    event = Some(if run.work_returned(&r, &describe) {
                        Event::Drained
                    } else {
                        cancel_sent = true;
                        Event::Cancel
                    });
                }
                item = async { watch.as_mut().expect("guarded").next().await }, if watch.is_some() => {
                    match item {
                        Some(Ok(v)) => {
                            last_watch_error = None;
                            event = Some(Event::Watched(v));
                        }
                        Some(Err(LockError::Corrupt { object, version: Some(version), source })) => {
                            let msg = format!("{object}: stored record is corrupt: {source}");
                            if last_error.as_ref().is_none_or(|e| e.message != msg) {
                                tracing::error!(lock = %describe, error = %msg, "cannot read the lock's record; not overwriting it unless it stays unchanged for a full lease duration");
                                last_error = Some(LastError::new(FailureKind::Corrupt, object, msg));
                            }
                            event = Some(Event::Unreadable { version, from_read: false });
                        }
                        other => {
                            match other {
                                // Not transient (e.g. RBAC lacks `watch`): say so, once per kind.
                                Some(Err(e)) if !e.is_retryable() => {
                                    let msg = display_chain(&e);
                                    if last_watch_error.as_deref() != Some(msg.as_str()) {
                                        tracing::warn!(lock = %describe, error = %msg, "watch failed; falling back to reads every retry period");
                                        last_watch_error = Some(msg);
                                    }
                                }
                                Some(Err(e)) => tracing::debug!(lock = %describe, error = %display_chain(&e), "watch ended; re-reading"),
                                _ => tracing::debug!(lock = %describe, "watch ended; re-reading"),
                            }
                            watch = None;
                            event = Some(Event::WatchLost);
                        }
                    }
                }
            }
        }
    }
}

impl<B: Election> Elector<B> {
    /// The term's [`Deadline`] for the machine's `leading_until` tick `until`: on the boot
    /// clock, the boot-clock reading at the send it counts from, plus the renew deadline.
    fn deadline(
        &self,
        origin: Instant,
        until: Duration,
        sends: &std::collections::VecDeque<(Duration, Option<Duration>)>,
    ) -> Deadline {
        let renew = self.timing.renew_deadline;
        let sent = until.saturating_sub(renew);
        // The earliest at that tick: on a coarse clock two sends can share one.
        let boottime = sends
            .iter()
            .find(|(tick, _)| *tick == sent)
            .and_then(|(_, boot)| *boot)
            .map(|boot| boot + renew);
        Deadline {
            at: origin + until,
            boottime,
        }
    }

    /// Records an Event about this candidate on the lock, in the background: best effort, never
    /// in the way of the election.
    fn record_event(
        &self,
        backend: &Arc<dyn LockBackend>,
        kind: LockEventKind,
        token: FencingToken,
    ) {
        let event = LockEvent::new(&*self.identity, kind, token);
        let backend = Arc::clone(backend);
        let metrics = Arc::clone(&self.metrics);
        tokio::spawn(async move {
            let r =
                tokio::time::timeout(Duration::from_secs(5), backend.record_event(&event)).await;
            let error = match r {
                Ok(Ok(())) => return,
                Ok(Err(e)) => display_chain(&e),
                Err(_) => "no answer within 5 s".to_owned(),
            };
            metrics.event_failed();
            tracing::warn!(lock = %backend.describe(), %error, "could not record an Event (best effort; the election is unaffected)");
        });
    }

    /// Runs on an etcd election: the election queue ([`leasehold_core::queue`]) and its
    /// executor, with the same terms, work, callbacks, status and requests as on a lock.
    #[cfg(feature = "etcd")]
    async fn run_queue(
        mut self,
        election: Arc<crate::backend::etcd::EtcdElection>,
        cancel: CancellationToken,
    ) {
        use leasehold_core::queue::{Action as Q, Event as E, Queue};
        let describe = Election::describe(&*election);
        let timing = self.timing.clone();
        // On a shared session, ticks count from the session's origin: the keepalive send
        // times it reports are on that clock.
        let session = election.session();
        let origin = session.map_or_else(Instant::now, |s| s.origin());
        let mut lease = session.map(crate::backend::etcd::EtcdSession::subscribe);
        let mut queue = match session {
            Some(_) => Queue::on_session(Arc::clone(&self.identity), election.name(), timing),
            None => Queue::new(Arc::clone(&self.identity), election.name(), timing),
        };
        let mut io = crate::backend::etcd::Io::new(&election, origin);
        let mut run = TermRun::default();
        // The boot-clock time of each recent keepalive's send, by the machine's tick: the
        // term's boot-clock deadline counts from the send the machine counts from.
        let mut sends: std::collections::VecDeque<(Duration, Option<Duration>)> =
            std::collections::VecDeque::with_capacity(SENDS_KEPT);
        let mut leader = String::new();
        let mut observed = false;
        let mut cancel_sent = false;
        let mut event = Some(E::Start);
        let mut cancelled = std::pin::pin!(cancel.cancelled());
        let mut step_downs = self.step_down_requests();
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(origin));
        loop {
            if let Some(ev) = event.take() {
                let now = Instant::now();
                let boot_now = (self.boot_clock)();
                tracing::trace!(lock = %describe, identity = %self.identity, tick = ?(now - origin), event = ?ev, "queue event");
                let actions = queue.handle(ev, now - origin);
                if !actions.is_empty() {
                    tracing::trace!(lock = %describe, identity = %self.identity, ?actions, "queue actions");
                }
                for action in actions {
                    match action {
                        Q::StartedLeading { token } => {
                            let until = queue.leading_until().unwrap_or_default();
                            let deadline = self.deadline(origin, until, &sends);
                            self.start_term(&mut run, &cancel, token, 0, deadline, &describe);
                        }
                        Q::StoppedLeading { token, reason } => {
                            self.stop_term(&mut run, token, &reason, &describe);
                            // The queue always waits for the work: with none, it is done.
                            run.drained |= self.work.is_none();
                        }
                        Q::NewLeader { identity } => {
                            observed = true;
                            leader.clone_from(&identity);
                            self.new_leader(&identity, &describe);
                        }
                        Q::StrayKey { key } => {
                            tracing::error!(lock = %describe, %key, "a key under the election's prefix has no lease: no candidate will ever delete it, and every candidate queued after it (etcd's own clients too) waits for it; delete it");
                        }
                        Q::TransferRefused { to, next } => {
                            tracing::warn!(lock = %describe, %to, ?next, "cannot hand over: on etcd only the candidate next in the queue can be the target");
                        }
                        Q::Finished => {
                            if let Some(task) = run.running.take() {
                                await_work(task, self.timing.lease_duration, &describe).await;
                            }
                            self.tx.send_modify(|s| s.role = Role::Stopped);
                            return;
                        }
                        other => {
                            if let Q::KeepAlive { .. } | Q::Grant { .. } = other {
                                if sends.len() == SENDS_KEPT {
                                    sends.pop_front();
                                }
                                sends.push_back((now - origin, boot_now));
                            }
                            io.execute(&other);
                        }
                    }
                }
                if let (Some(tx), Some(until)) = (&run.valid_until, queue.leading_until()) {
                    let moved = tx.send_if_modified(|v| {
                        if v.at == origin + until {
                            return false;
                        }
                        *v = self.deadline(origin, until, &sends);
                        true
                    });
                    if moved {
                        self.term_until.send_replace(Some(origin + until));
                    }
                }
                let (role, token) = (queue.role(), queue.fencing_token());
                let next = queue.next_in_line();
                self.tx.send_if_modified(|s| {
                    let changed = (s.role, s.fencing_token, s.observed, s.leader.as_str())
                        != (role, token, observed, leader.as_str())
                        || s.next_in_line.as_deref() != next;
                    if changed {
                        (s.role, s.fencing_token, s.observed) = (role, token, observed);
                        s.leader.clone_from(&leader);
                        s.next_in_line = next.map(str::to_owned);
                    }
                    changed
                });
                if observed {
                    self.metrics
                        .set_leaderless(leader.is_empty(), Instant::now());
                }
            }

            let timer_at = queue.deadline().map_or_else(
                || Instant::now() + Duration::from_secs(3600),
                |d| origin + d,
            );
            if sleep.deadline() != timer_at {
                sleep.as_mut().reset(timer_at);
            }
            event = Some(tokio::select! {
                biased;
                () = std::future::ready(()), if run.drained => {
                    run.drained = false;
                    E::Drained
                }
                _ = &mut cancelled, if !cancel_sent => {
                    cancel_sent = true;
                    // Stop acting first, whatever the queue is waiting for.
                    drop(run.leadership.take());
                    E::Cancel
                }
                Ok(()) = step_downs.changed(), if !cancel_sent => {
                    match step_downs.borrow_and_update().what.clone() {
                        Request::StepDown(hold_off) => E::StepDown { hold_off },
                        Request::Resume => E::Resume,
                        Request::Transfer(to) => E::Transfer { to },
                    }
                }
                // The timer before the I/O: a busy stream of answers must not hold it off.
                _ = &mut sleep => E::Timer,
                Some(l) = async {
                    let rx = lease.as_mut()?;
                    rx.changed().await.ok()?;
                    Some(*rx.borrow_and_update())
                }, if lease.is_some() => {
                    let Some(ev) = l.event() else { continue };
                    if l.alive {
                        if sends.len() == SENDS_KEPT {
                            sends.pop_front();
                        }
                        sends.push_back((l.sent, l.boot_sent));
                    }
                    ev
                }
                ev = io.next() => ev,
                r = async { run.running.as_mut().expect("guarded").await }, if run.running.is_some() => {
                    if run.work_returned(&r, &describe) {
                        E::Drained
                    } else {
                        cancel_sent = true;
                        E::Cancel
                    }
                }
            });
        }
    }

    /// Step-down requests from handles. One made before the run started still counts (a
    /// health gate that holds the candidate off until its first probe passes, say).
    fn step_down_requests(&self) -> watch::Receiver<StepDownRequest> {
        let mut rx = self.step_down.subscribe();
        if rx.borrow().seq > 0 {
            rx.mark_changed();
        }
        rx
    }

    /// A term begins: hand out its [`Leadership`], start the work, call back.
    fn start_term(
        &mut self,
        run: &mut TermRun,
        cancel: &CancellationToken,
        token: FencingToken,
        transitions: i32,
        deadline: Deadline,
        describe: &str,
    ) {
        tracing::info!(lock = %describe, identity = %self.identity, fencing_token = %token, "started leading");
        self.metrics.started_term();
        let t = cancel.child_token();
        run.leadership = Some(t.clone().drop_guard());
        self.term_until.send_replace(Some(deadline.at));
        let (until_tx, until_rx) = watch::channel(deadline);
        run.valid_until = Some(until_tx);
        let term = Leadership {
            token: t,
            fencing_token: token,
            transitions,
            identity: Arc::clone(&self.identity),
            valid_until: until_rx,
        };
        self.term.send_replace(Some(term.clone()));
        if let Some(work) = &mut self.work {
            run.running = Some(tokio::spawn(work(term.clone())));
        }
        if let Some(f) = &mut self.on_started {
            f(term);
        }
    }

    /// The term ends: cancel its token, tell the work to stop, call back.
    fn stop_term(
        &mut self,
        run: &mut TermRun,
        token: FencingToken,
        reason: &StepDown,
        describe: &str,
    ) {
        // Dropping the guard cancels the token.
        drop(run.leadership.take());
        run.valid_until = None;
        self.term_until.send_replace(None);
        self.term.send_replace(None);
        run.told_to_stop = Some((token, Instant::now()));
        // A work that already returned has nothing left to drain.
        run.drained = self.work.is_some() && run.running.is_none();
        log_step_down(describe, token, reason);
        if let Some(f) = &mut self.on_stopped {
            f();
        }
    }

    fn new_leader(&mut self, identity: &str, describe: &str) {
        tracing::debug!(lock = %describe, leader = %identity, "new leader observed");
        if let Some(f) = &mut self.on_new_leader {
            f(identity);
        }
    }

    /// Election disabled: lead at once, touch nothing, stop when cancelled.
    async fn run_disabled(mut self, cancel: CancellationToken) {
        tracing::info!(identity = %self.identity, "leader election is disabled: leading at once without a lock");
        let token = FencingToken(0);
        let t = cancel.child_token();
        let far = Duration::from_secs(100 * 365 * 86_400);
        let (_until_tx, until_rx) = watch::channel(Deadline {
            at: Instant::now() + far,
            boottime: (self.boot_clock)().map(|b| b + far),
        });
        self.term_until.send_replace(Some(until_rx.borrow().at));
        self.tx.send_modify(|s| {
            s.role = Role::Leader;
            s.leader = self.identity.to_string();
            s.fencing_token = Some(token);
            s.observed = true;
        });
        if let Some(f) = &mut self.on_new_leader {
            f(&self.identity);
        }
        let term = Leadership {
            token: t.clone(),
            fencing_token: token,
            transitions: 0,
            identity: Arc::clone(&self.identity),
            valid_until: until_rx,
        };
        self.term.send_replace(Some(term.clone()));
        let running = self
            .work
            .as_mut()
            .map(|work| tokio::spawn(work(term.clone())));
        if let Some(f) = &mut self.on_started {
            f(term);
        }
        cancel.cancelled().await;
        t.cancel();
        if let Some(task) = running {
            let wait = self.timing.lease_duration;
            await_work(task, wait, "(election disabled)").await;
        }
        self.term_until.send_replace(None);
        self.term.send_replace(None);
        if let Some(f) = &mut self.on_stopped {
            f();
        }
        self.tx.send_replace(Status::default());
        self.tx.send_modify(|s| s.role = Role::Stopped);
    }
}

/// Waits for the leader work when the run is over: it was told to stop, and the machine has
/// reported it if it is late. After a further `wait` (a lease duration) it is aborted at its
/// next await point, so a work that ignores cancellation cannot hold the program forever.
async fn await_work(mut task: tokio::task::JoinHandle<()>, wait: Duration, describe: &str) {
    if tokio::time::timeout(wait, &mut task).await.is_err() {
        tracing::error!(lock = %describe, ?wait, "leader work still running at shutdown; aborting it");
        task.abort();
        let _ = task.await;
    }
}

/// Rounds `at` up to the next point of a grid of step `slack` shared by every elector in the
/// process, so that renewals falling due within one step wake the runtime once and leave in
/// one write on the connection. At 10,000 elections the wakeups, syscalls and loopback TCP work
/// of single renewals were over a third of the process's CPU (docs/benchmarks.md). The machine
/// grants slack only for routine renewals, never for a step-down.
///
/// The steps are the coarsest of 200 ms, 100 ms, 50 ms, ... that fits the slack, so the grids
/// nest: an election whose slack is short (its jitter window nearly over) still lands on points
/// that others share, instead of on a grid of its own.
fn on_shared_grid(at: Instant, slack: Duration) -> Instant {
    const COARSEST: u128 = 200_000_000;
    static EPOCH: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let epoch = *EPOCH.get_or_init(Instant::now);
    let mut step = COARSEST;
    while step > slack.as_nanos() {
        step /= 2;
    }
    if step < 1_000_000 || at <= epoch {
        // Under a millisecond is below the timer's resolution anyway.
        return at;
    }
    let since = (at - epoch).as_nanos();
    let up = since.div_ceil(step) * step;
    // `up - since < step <= slack`: fits in a Duration.
    at + Duration::from_nanos(u64::try_from(up - since).unwrap_or(0))
}

/// Reads the record from `backend` by `at`, into the event that reports it.
fn read<B: LockBackend + ?Sized>(
    backend: &Arc<B>,
    metrics: &Arc<Metrics>,
    object: &Arc<str>,
    at: Instant,
) -> Pending {
    let (b, m, object) = (Arc::clone(backend), Arc::clone(metrics), Arc::clone(object));
    Box::pin(async move {
        let r = timeout_at(at, b.get()).await;
        match &r {
            Ok(Err(e)) => m.failed(e),
            Err(_) => m.timed_out(),
            Ok(Ok(_)) => {}
        }
        match r {
            Ok(Ok(v)) => (Event::ReadDone(Ok(v)), None),
            Ok(Err(
                e @ LockError::Corrupt {
                    version: Some(_), ..
                },
            )) => {
                let failure = failure(&e);
                let LockError::Corrupt {
                    version: Some(version),
                    ..
                } = e
                else {
                    unreachable!("matched above")
                };
                (
                    Event::Unreadable {
                        version,
                        from_read: true,
                    },
                    Some(failure),
                )
            }
            Ok(Err(e)) => (Event::ReadDone(Err(e.kind())), Some(failure(&e))),
            Err(_) => (
                Event::ReadDone(Err(ErrorKind::Timeout)),
                Some(timed_out("get", &object)),
            ),
        }
    })
}

/// Says why a term ended, at the level the reason deserves.
fn log_step_down(describe: &str, token: FencingToken, reason: &StepDown) {
    match reason {
        StepDown::Cancelled => {
            tracing::info!(lock = %describe, fencing_token = %token, "stopped leading: shutting down")
        }
        StepDown::Preferred { holder } => {
            tracing::info!(lock = %describe, fencing_token = %token, preferred_holder = %holder, "stopped leading: the lock's preferredHolder names another candidate; releasing it to them (standbys leave it to them for a lease duration)")
        }
        StepDown::Transferred { to } => {
            tracing::info!(lock = %describe, fencing_token = %token, to = %to, "stopped leading: handing over")
        }
        StepDown::Requested => {
            tracing::info!(lock = %describe, fencing_token = %token, "stopped leading: step-down requested; releasing")
        }
        StepDown::DeadlineExceeded => {
            tracing::warn!(lock = %describe, fencing_token = %token, "stopped leading: no renewal succeeded within the renew deadline")
        }
        StepDown::Lost { holder } => {
            tracing::warn!(lock = %describe, fencing_token = %token, new_holder = %holder, "stopped leading: lock taken over")
        }
        StepDown::Deleted => {
            tracing::warn!(lock = %describe, fencing_token = %token, "stopped leading: lock object deleted")
        }
        StepDown::Unreadable => {
            tracing::error!(lock = %describe, fencing_token = %token, "stopped leading: the lock's record was replaced by one that cannot be read")
        }
        StepDown::DuplicateIdentity => {
            tracing::error!(lock = %describe, fencing_token = %token, "stopped leading: another process renewed the lock under this identity")
        }
        other => {
            tracing::warn!(lock = %describe, fencing_token = %token, reason = ?other, "stopped leading")
        }
    }
}

fn write_event<E>(
    r: std::result::Result<std::result::Result<leasehold_core::Version, LockError>, E>,
    op: &'static str,
    object: &str,
    metrics: &Metrics,
    renewal_sent: Option<Instant>,
) -> (Event, Option<LastError>) {
    match r {
        Ok(Ok(v)) => {
            if let Some(at) = renewal_sent {
                metrics.renewed(at.elapsed());
            }
            (Event::WriteDone(Ok(v)), None)
        }
        Ok(Err(e)) => {
            metrics.failed(&e);
            (Event::WriteDone(Err(e.kind())), Some(failure(&e)))
        }
        Err(_) => {
            metrics.timed_out();
            (
                Event::WriteDone(Err(ErrorKind::Timeout)),
                Some(timed_out(op, object)),
            )
        }
    }
}

/// How many sends the driver remembers the boot-clock time of, from the one the term counts from
/// on (the machine may count from an earlier send than the latest: a run of writes alike at
/// whole seconds). Sends before that one are dropped first; this only bounds the memory.
const SENDS_KEPT: usize = 64;

/// Now on `CLOCK_BOOTTIME` (Linux): like `CLOCK_MONOTONIC`, but it keeps counting while the
/// host is suspended.
pub(crate) fn boottime() -> Option<Duration> {
    #[cfg(any(target_os = "linux", target_os = "android"))]
    {
        let t = rustix::time::clock_gettime(rustix::time::ClockId::Boottime);
        Some(Duration::new(
            u64::try_from(t.tv_sec).ok()?,
            u32::try_from(t.tv_nsec).ok()?,
        ))
    }
    #[cfg(not(any(target_os = "linux", target_os = "android")))]
    {
        None
    }
}

fn timed_out(op: &str, object: &str) -> LastError {
    LastError::new(
        FailureKind::Timeout,
        object,
        format!("{op} `{object}`: no answer before the request deadline"),
    )
}

fn failure(e: &LockError) -> LastError {
    LastError::new(e.failure_kind(), e.object(), display_chain(e))
}

/// Formats an error with its sources, `a: b: c`, skipping a source whose text the previous one
/// already contains (some dependencies repeat their cause in their own message).
pub fn display_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut prev = s.clone();
    let mut cur = e.source();
    while let Some(c) = cur {
        let text = c.to_string();
        if !prev.contains(&text) {
            s.push_str(": ");
            s.push_str(&text);
        }
        prev = text;
        cur = c.source();
    }
    s
}

fn seed_from(identity: &str) -> u64 {
    // Different candidates (and restarts) get different jitter; not security-relevant.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in identity.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let nanos = u64::from(jiff::Timestamp::now().subsec_nanosecond().unsigned_abs());
    h ^ nanos ^ u64::from(std::process::id())
}

#[cfg(test)]
mod tests {
    use super::on_shared_grid;
    use std::time::Duration;
    use tokio::time::Instant;

    #[test]
    fn the_grid_delays_by_less_than_the_slack_and_groups_nearby_deadlines() {
        let slack = Duration::from_millis(50);
        let base = Instant::now() + Duration::from_secs(1);
        let times: Vec<Instant> = (0..50)
            .map(|i| on_shared_grid(base + Duration::from_millis(i), slack))
            .collect();
        for (i, t) in times.iter().enumerate() {
            let at = base + Duration::from_millis(i as u64);
            assert!(*t >= at && *t - at < slack, "{i}: {:?}", *t - at);
        }
        let mut distinct = times.clone();
        distinct.dedup();
        assert!(
            distinct.len() <= 2,
            "50 deadlines within 50 ms: {} wakeups",
            distinct.len()
        );
        let at = base + Duration::from_millis(3);
        assert_eq!(on_shared_grid(at, Duration::ZERO), at, "no slack, no delay");
    }
}
