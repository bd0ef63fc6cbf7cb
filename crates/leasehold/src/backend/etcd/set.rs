//! Many elections on one session, driven by one task: for a process that holds an election per
//! shard or tenant, thousands of them.
//!
//! An [`Elector`](crate::Elector) per election costs a task, status channels and a machine:
//! 8.3 KiB of RSS per election at 100,000. An [`ElectionSet`] runs each election's sans-IO
//! queue ([`leasehold_core::queue`]) in one task instead, with one timer heap, one inbox for
//! the watches of all, and a bounded number of requests in flight: 0.9 KiB per election at
//! 100,000, and a seventh of the CPU (`leasehold-bench etcd`, docs/benchmarks-etcd.md).

use super::session::{Delivery, Inbox, Lease, hash};
use super::{EtcdSession, Report, Requests, timed_out};
use crate::{Deadline, Leadership};
use futures_util::{FutureExt as _, StreamExt as _, future::BoxFuture, stream::FuturesUnordered};
use leasehold_core::{
    ConfigError, FencingToken, StepDown, Timing,
    queue::{Action, Event, Queue, Tick},
};
use std::{
    cmp::Reverse,
    collections::{BinaryHeap, VecDeque},
    future::Future,
    sync::{Arc, Mutex},
};
use tokio::{sync::watch, time::Instant};
use tokio_util::sync::{CancellationToken, DropGuard};

/// Many elections on one [`EtcdSession`], run by one task.
///
/// Each election is etcd's own queue, as with an [`Elector`](crate::Elector): this candidate
/// puts `<name>/<lease hex>` with the session's lease, leads when its key is first, and stops
/// acting at the renew deadline after the session's last answered keepalive. What a set saves
/// is memory and wake-ups: one task drives every election, and a keepalive moves every
/// leader's deadline at once.
///
/// A term starts with [`SetEvent::StartedLeading`] and its [`Leadership`], whose token is
/// cancelled when the term ends. The key is deleted right after that, as for an elector with
/// callbacks (not [`run_while_leading`](crate::Elector::run_while_leading), which waits for the
/// work): stop acting when the token is cancelled, and fence downstream writes with the term's
/// [`FencingToken`].
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use leasehold::backend::etcd::{ElectionSet, EtcdSession, SetEvent, etcd_client};
/// use leasehold::Timing;
/// use tokio_util::sync::CancellationToken;
///
/// let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
/// let timing = Timing::default();
/// let session = EtcdSession::new(client, timing.clone());
/// let tenants: Vec<String> = (0..10_000).map(|i| format!("my-app/tenant-{i}")).collect();
/// let set = ElectionSet::new(&session, "pod-a", timing).on_event(|event| match event {
///     SetEvent::StartedLeading { name, leadership, .. } => {
///         let name = name.to_owned();
///         tokio::spawn(async move {
///             // Serve the tenant until the term ends.
///             leadership.lost().await;
///             println!("{name}: stopped");
///         });
///     }
///     _ => {}
/// });
/// set.run(tenants, CancellationToken::new())?.await;
/// # Ok(()) }
/// ```
pub struct ElectionSet {
    session: EtcdSession,
    identity: Arc<str>,
    timing: Timing,
    on_event: Option<OnEvent>,
}

type OnEvent = Box<dyn FnMut(SetEvent<'_>) + Send>;

/// What happened in one election of an [`ElectionSet`].
#[derive(Debug)]
#[non_exhaustive]
pub enum SetEvent<'a> {
    /// This candidate leads election `index` (`name`).
    StartedLeading {
        /// The election's place in the names given to [`ElectionSet::run`].
        index: usize,
        /// The election's name.
        name: &'a str,
        /// The term: its token is cancelled when it ends.
        leadership: Leadership,
    },
    /// The term in election `index` ended; its token is cancelled.
    StoppedLeading {
        /// The election's place in the names given to [`ElectionSet::run`].
        index: usize,
        /// The election's name.
        name: &'a str,
        /// The term's token.
        fencing_token: FencingToken,
        /// Why.
        reason: StepDown,
    },
    /// Election `index` has a new leader (empty: none is known).
    NewLeader {
        /// The election's place in the names given to [`ElectionSet::run`].
        index: usize,
        /// The election's name.
        name: &'a str,
        /// The leader's identity (its key's value).
        identity: &'a str,
    },
}

// === impl ElectionSet ===

impl ElectionSet {
    /// Elections for candidate `identity` on `session`, with `timing` (give the session's, or
    /// one whose renew deadline is longer than the session's keepalive interval).
    pub fn new(session: &EtcdSession, identity: impl Into<String>, timing: Timing) -> Self {
        Self {
            session: session.clone(),
            identity: Arc::from(identity.into()),
            timing,
            on_event: None,
        }
    }

    /// Called on the set's task for every start and end of a term and every new leader: keep
    /// it short, and spawn what runs long.
    #[must_use]
    pub fn on_event(mut self, f: impl FnMut(SetEvent<'_>) + Send + 'static) -> Self {
        self.on_event = Some(Box::new(f));
        self
    }

    /// Campaigns in every election of `names` until `cancel`, then ends each term, deletes
    /// each key, and returns. The future does all the work: spawn it or await it.
    ///
    /// # Errors
    /// [`Error::Config`](crate::Error::Config) for an empty identity or a timing that breaks
    /// the rules; [`Error::SessionTaken`](crate::Error::SessionTaken) for a name given twice,
    /// or one that already has an elector or a set on this session;
    /// [`Error::TooManyElections`](crate::Error::TooManyElections) past `u32::MAX` names.
    pub fn run(
        self,
        names: Vec<String>,
        cancel: CancellationToken,
    ) -> crate::Result<impl Future<Output = ()> + Send + 'static> {
        if self.identity.is_empty() {
            return Err(ConfigError::EmptyIdentity.into());
        }
        self.timing.validate()?;
        if u32::try_from(names.len()).is_err() {
            return Err(crate::Error::TooManyElections { count: names.len() });
        }
        self.session
            .claim_for_set(&names)
            .map_err(|name| crate::Error::SessionTaken { name })?;
        let claims = Claims {
            session: self.session.clone(),
            hashes: names.iter().map(|n| hash(n)).collect(),
        };
        let engine = Engine::new(self, names);
        Ok(async move {
            engine.run(cancel).await;
            drop(claims);
        })
    }
}

impl std::fmt::Debug for ElectionSet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ElectionSet")
            .field("identity", &self.identity)
            .field("session", &self.session)
            .finish_non_exhaustive()
    }
}

/// A set's names on its session, given back when the set's run ends or is dropped.
struct Claims {
    session: EtcdSession,
    hashes: Vec<u64>,
}

impl Drop for Claims {
    fn drop(&mut self) {
        self.session.release_set(self.hashes.drain(..));
    }
}

/// How many requests of a set are in flight at a time; the rest wait as actions.
const IN_FLIGHT: usize = 256;

/// One election of the set.
struct Slot {
    queue: Queue,
    /// Cancels the term's token when dropped.
    term: Option<DropGuard>,
    /// The earliest timer on the heap for this slot.
    armed: Option<Tick>,
    /// The id of its watch on the session's stream; 0: none.
    watch: i64,
    done: bool,
}

/// The set's task: executes each queue's actions and feeds back their results.
struct Engine {
    session: EtcdSession,
    origin: Instant,
    identity: Arc<str>,
    timing: Timing,
    on_event: Option<OnEvent>,
    slots: Vec<Slot>,
    /// Slots started so far: a set starts its elections as requests go out, so that 100,000
    /// campaigns never wait in memory at once.
    started: usize,
    finished: usize,
    timers: BinaryHeap<Reverse<(Tick, u32)>>,
    waiting: VecDeque<(u32, Action)>,
    pending: FuturesUnordered<BoxFuture<'static, (u32, Event)>>,
    inbox: Arc<Inbox>,
    lease: Lease,
    valid_until: watch::Sender<Deadline>,
    last_failure: Arc<Mutex<Option<String>>>,
    cancelling: bool,
}

impl Drop for Engine {
    /// Ended, or dropped before the end: the session's stream stops watching for it. (Keys
    /// left behind go with the lease, when the session is dropped.)
    fn drop(&mut self) {
        for slot in &mut self.slots {
            if slot.watch != 0 {
                self.session.unwatch(std::mem::take(&mut slot.watch));
            }
        }
    }
}

/// What woke the task.
enum Wake {
    Cancel,
    Timer,
    Lease(Lease),
    Watch,
    Answer(u32, Event),
}

impl Engine {
    fn new(set: ElectionSet, names: Vec<String>) -> Self {
        let ElectionSet {
            session,
            identity,
            timing,
            on_event,
        } = set;
        let origin = session.origin();
        let shared = Arc::new(timing.clone());
        let slots = names
            .into_iter()
            .map(|n| Slot {
                queue: Queue::on_session(Arc::clone(&identity), &n, Arc::clone(&shared)),
                term: None,
                armed: None,
                watch: 0,
                done: false,
            })
            .collect();
        Self {
            last_failure: session.last_failure(),
            session,
            origin,
            identity,
            timing,
            on_event,
            slots,
            started: 0,
            finished: 0,
            timers: BinaryHeap::new(),
            waiting: VecDeque::new(),
            pending: FuturesUnordered::new(),
            inbox: Arc::default(),
            lease: Lease::default(),
            valid_until: watch::channel(Deadline {
                at: origin,
                boottime: None,
            })
            .0,
            cancelling: false,
        }
    }

    fn now(&self) -> Tick {
        Instant::now() - self.origin
    }

    async fn run(mut self, cancel: CancellationToken) {
        let mut lease = self.session.subscribe();
        let mut cancelled = std::pin::pin!(cancel.cancelled_owned());
        let mut sleep = std::pin::pin!(tokio::time::sleep_until(self.origin));
        while self.finished < self.slots.len() {
            self.start_more();
            self.send_waiting();
            let timer = self.timers.peek().map(|Reverse((t, _))| self.origin + *t);
            if let Some(at) = timer
                && sleep.deadline() != at
            {
                sleep.as_mut().reset(at);
            }
            let wake = tokio::select! {
                biased;
                () = &mut cancelled, if !self.cancelling => Wake::Cancel,
                // The timers before the answers: a busy stream of them must not hold off a
                // leader's step-down.
                () = &mut sleep, if timer.is_some() => Wake::Timer,
                Ok(()) = lease.changed() => Wake::Lease(*lease.borrow_and_update()),
                () = self.inbox.ready.notified() => Wake::Watch,
                Some((i, ev)) = self.pending.next(), if !self.pending.is_empty() => Wake::Answer(i, ev),
            };
            let now = self.now();
            match wake {
                Wake::Cancel => self.cancel_all(now),
                Wake::Timer => self.timers_due(now),
                Wake::Lease(l) => self.on_lease(l, now),
                Wake::Watch => {
                    for Delivery {
                        index,
                        watch,
                        changes,
                    } in self.inbox.take()
                    {
                        let slot = &mut self.slots[index as usize];
                        if slot.watch != watch || slot.done {
                            continue;
                        }
                        let ev = match changes {
                            Some(c) => Event::Changed(c),
                            None => {
                                slot.watch = 0;
                                Event::WatchLost
                            }
                        };
                        self.handle(index, ev, now);
                    }
                }
                Wake::Answer(i, ev) => self.handle(i, ev, now),
            }
        }
    }

    /// Starts more elections while few requests wait.
    fn start_more(&mut self) {
        // Only on a live lease: before it, a started election would only wait.
        while self.started < self.slots.len()
            && !self.cancelling
            && self.lease.alive
            && self.pending.len() + self.waiting.len() < IN_FLIGHT
        {
            let i = u32::try_from(self.started).unwrap_or(u32::MAX);
            self.started += 1;
            let now = self.now();
            self.handle(i, Event::Start, now);
            if let Some(ev) = self.lease.event() {
                self.handle(i, ev, now);
            }
        }
    }

    /// Sends waiting requests while there is room.
    fn send_waiting(&mut self) {
        while self.pending.len() < IN_FLIGHT {
            let Some((i, action)) = self.waiting.pop_front() else {
                break;
            };
            self.send(i, action);
        }
        if self.waiting.is_empty() && self.waiting.capacity() > 4 * IN_FLIGHT {
            // A burst (every election queueing again on a new lease) leaves no big buffer.
            self.waiting.shrink_to(IN_FLIGHT);
        }
    }

    /// The session's lease moved: every started election hears it. A keepalive costs each
    /// election one call that changes nothing but its term's bound.
    fn on_lease(&mut self, lease: Lease, now: Tick) {
        self.lease = lease;
        if lease.alive {
            let bound = self.timing.renew_deadline.min(lease.ttl - lease.ttl / 10);
            self.valid_until.send_if_modified(|d| {
                let new = Deadline {
                    at: self.origin + lease.sent + bound,
                    boottime: lease.boot_sent.map(|b| b + bound),
                };
                let moved = *d != new;
                *d = new;
                moved
            });
        }
        let Some(ev) = lease.event() else { return };
        for i in 0..self.started {
            if !self.slots[i].done {
                self.handle(u32::try_from(i).unwrap_or(u32::MAX), ev.clone(), now);
            }
        }
    }

    /// Every election stops acting, then leaves its queue.
    fn cancel_all(&mut self, now: Tick) {
        self.cancelling = true;
        for slot in &mut self.slots {
            drop(slot.term.take());
        }
        // Never started: nothing to leave.
        for slot in &mut self.slots[self.started..] {
            slot.done = true;
            self.finished += 1;
        }
        for i in 0..self.started {
            if !self.slots[i].done {
                self.handle(u32::try_from(i).unwrap_or(u32::MAX), Event::Cancel, now);
            }
        }
    }

    fn timers_due(&mut self, now: Tick) {
        while let Some(&Reverse((at, i))) = self.timers.peek() {
            if at > now {
                break;
            }
            self.timers.pop();
            let slot = &mut self.slots[i as usize];
            if slot.armed != Some(at) || slot.done {
                continue;
            }
            slot.armed = None;
            match slot.queue.deadline() {
                // Moved on since it was armed (a keepalive): arm again, nothing is due.
                Some(d) if d > now => self.arm(i),
                None => {}
                Some(_) => self.handle(i, Event::Timer, now),
            }
        }
    }

    /// Puts the slot's deadline on the heap, unless an earlier one is there already.
    fn arm(&mut self, i: u32) {
        let slot = &mut self.slots[i as usize];
        if slot.done {
            return;
        }
        if let Some(d) = slot.queue.deadline()
            && slot.armed.is_none_or(|a| d < a)
        {
            slot.armed = Some(d);
            self.timers.push(Reverse((d, i)));
        }
    }

    /// Feeds `event` to election `i` and carries out what it asks.
    fn handle(&mut self, i: u32, event: Event, now: Tick) {
        let mut next = Some(event);
        while let Some(ev) = next.take() {
            let actions = self.slots[i as usize].queue.handle(ev, now);
            for action in actions {
                if self.act(i, action) {
                    // No work to wait for: the term's token is cancelled, it is drained.
                    next = Some(Event::Drained);
                }
            }
        }
        self.arm(i);
    }

    /// Carries out one action; true when the queue is to hear that the term drained.
    fn act(&mut self, i: u32, action: Action) -> bool {
        let index = i as usize;
        match action {
            Action::StartedLeading { token } => {
                let slot = &mut self.slots[index];
                let t = CancellationToken::new();
                slot.term = Some(t.clone().drop_guard());
                if let Some(until) = slot.queue.leading_until() {
                    let at = self.origin + until;
                    self.valid_until.send_if_modified(|d| {
                        let moved = d.at != at;
                        if moved {
                            // Not the session's last report (which the queue has): no boot
                            // time to give.
                            *d = Deadline { at, boottime: None };
                        }
                        moved
                    });
                }
                let leadership = Leadership::for_set(
                    t,
                    token,
                    Arc::clone(&self.identity),
                    self.valid_until.subscribe(),
                );
                tracing::debug!(election = %name(&self.slots[index].queue), fencing_token = %token, "started leading");
                if let Some(f) = &mut self.on_event {
                    f(SetEvent::StartedLeading {
                        index,
                        name: name(&self.slots[index].queue),
                        leadership,
                    });
                }
                false
            }
            Action::StoppedLeading { token, reason } => {
                drop(self.slots[index].term.take());
                tracing::debug!(election = %name(&self.slots[index].queue), fencing_token = %token, ?reason, "stopped leading");
                if let Some(f) = &mut self.on_event {
                    f(SetEvent::StoppedLeading {
                        index,
                        name: name(&self.slots[index].queue),
                        fencing_token: token,
                        reason,
                    });
                }
                true
            }
            Action::NewLeader { identity } => {
                if let Some(f) = &mut self.on_event {
                    f(SetEvent::NewLeader {
                        index,
                        name: name(&self.slots[index].queue),
                        identity: &identity,
                    });
                }
                false
            }
            Action::StrayKey { key } => {
                tracing::error!(election = %name(&self.slots[index].queue), %key, "a key under the election's prefix has no lease: no candidate will ever delete it, and every candidate queued after it (etcd's own clients too) waits for it; delete it");
                false
            }
            Action::Finished => {
                let slot = &mut self.slots[index];
                slot.done = true;
                slot.armed = None;
                if slot.watch != 0 {
                    self.session.unwatch(std::mem::take(&mut slot.watch));
                }
                self.finished += 1;
                false
            }
            Action::Watch { revision } => {
                let slot = &mut self.slots[index];
                if slot.watch != 0 {
                    self.session.unwatch(slot.watch);
                }
                let prefix = slot.queue.prefix().to_owned();
                slot.watch = self.session.watch_for(prefix, revision, &self.inbox, i);
                false
            }
            Action::Unwatch => {
                let slot = &mut self.slots[index];
                if slot.watch != 0 {
                    self.session.unwatch(std::mem::take(&mut slot.watch));
                }
                false
            }
            request => {
                if self.pending.len() < IN_FLIGHT {
                    self.send(i, request);
                } else {
                    self.waiting.push_back((i, request));
                }
                false
            }
        }
    }

    /// Sends one request, or answers it timed out if its deadline passed while it waited.
    fn send(&mut self, i: u32, action: Action) {
        let now = self.now();
        if deadline(&action).is_some_and(|d| d <= now) {
            let ev = timed_out(&action);
            self.pending.push(std::future::ready((i, ev)).boxed());
            return;
        }
        let prefix = self.slots[i as usize].queue.prefix().to_owned();
        let requests = Requests {
            client: Arc::clone(self.session.client()),
            report: Arc::new(Report {
                prefix: prefix.clone(),
                last: Arc::clone(&self.last_failure),
            }),
            prefix,
            origin: self.origin,
            keeper: Arc::default(),
        };
        if let Some(request) = requests.make(action) {
            self.pending.push(request.map(move |ev| (i, ev)).boxed());
        }
    }
}

/// The election's name: its prefix without the slash.
fn name(queue: &Queue) -> &str {
    queue.prefix().strip_suffix('/').unwrap_or(queue.prefix())
}

/// When a request's answer is given up on.
fn deadline(action: &Action) -> Option<Tick> {
    match action {
        Action::Grant { deadline, .. }
        | Action::KeepAlive { deadline, .. }
        | Action::Campaign { deadline, .. }
        | Action::List { deadline }
        | Action::Resign { deadline, .. }
        | Action::Revoke { deadline, .. }
        | Action::RevokeStale { deadline, .. } => Some(*deadline),
        _ => None,
    }
}
