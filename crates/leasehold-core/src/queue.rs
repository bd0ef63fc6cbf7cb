//! Election by queue, as etcd elects: a state machine with no I/O, for the etcd backend.
//!
//! etcd's own election (`concurrency.Election` in Go, `etcdctl elect`, and the server's
//! `v3election` service, which runs the same code) is not a shared record but a queue. Each
//! candidate holds a *session*, an etcd lease kept alive by keepalives, and puts one key
//! `<name>/<lease id in hex>` attached to it, holding its proposal (here: its identity). The key
//! with the lowest create revision leads; everyone else waits for the keys before theirs to go.
//! A key goes when its candidate resigns (deletes it), revokes its lease, or stops keeping its
//! lease alive, in which case etcd deletes it when the lease expires on the server.
//!
//! This machine takes part in that queue as etcd's clients do, so leasehold candidates, `etcdctl
//! elect` and Go programs on `concurrency.Election` share one election. What it adds:
//!
//! - **A leader stops before its lease can expire.** It leads only until the send time of the
//!   last keepalive that was answered, plus the renew deadline, which is shorter than the
//!   lease's TTL. etcd counts the TTL from when it *received* that keepalive (later than the
//!   send), and a change of etcd leader only extends it. Go's session counts from the
//!   *receipt* of the answer, and its election never stops a leader on its own.
//! - **A term never comes back.** After a step-down, for whatever reason, the candidate deletes
//!   its key (or lets its lease expire) and queues again with a new key. The fencing token is
//!   the key's create revision, so no two terms share one, and a later term has a larger one.
//! - **Standbys see the whole queue**, through one watch on the prefix, and know the leader's
//!   identity and their place; they act only when every key before theirs is gone.
//! - **Keys that are not candidates** (no lease: nobody will ever delete them) are reported by
//!   name ([`Action::StrayKey`]). They stay in the queue: Go candidates wait behind them too, and
//!   skipping one would make two leaders.
//!
//! The driver (the `leasehold` crate's etcd backend) carries out each [`Action`] and feeds the
//! result back as an [`Event`], with the time.

use crate::{FencingToken, Role, StepDown, Timing, lock::ErrorKind};
use std::{sync::Arc, time::Duration};

/// Time on the driver's monotonic clock, as in [`crate::machine`].
pub type Tick = Duration;

/// A candidate's key in the queue, as listed or watched.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The whole key, `<name>/<lease hex>` for candidates.
    pub key: String,
    /// Its create revision: its place in the queue, and the token of its term.
    pub create_revision: i64,
    /// Its value: the candidate's proposal (leasehold writes its identity).
    pub value: String,
    /// The lease it is attached to; 0 for none.
    pub lease: i64,
}

/// A change seen by the watch on the election's prefix, in etcd's order.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// A key was created or its value changed (a proclamation).
    Put(Entry),
    /// A key was deleted: resigned, revoked, or its lease expired.
    Delete {
        /// The key.
        key: String,
    },
}

/// What the driver tells the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Begin: obtain a session and queue.
    Start,
    /// A deadline passed ([`Queue::deadline`]).
    Timer,
    /// The answer to [`Action::Grant`]: the lease and the TTL etcd granted (never less than
    /// asked; etcd raises a TTL below its minimum).
    Granted(Result<(i64, Duration), ErrorKind>),
    /// The answer to [`Action::KeepAlive`]: the lease's TTL, or `None` if etcd no longer has
    /// the lease (it expired or was revoked).
    KeptAlive(Result<Option<Duration>, ErrorKind>),
    /// The answer to [`Action::Campaign`]: the create revision of this candidate's key.
    Campaigned(Result<i64, ErrorKind>),
    /// The answer to [`Action::List`]: every key under the prefix, and the store revision it
    /// was read at.
    Listed(Result<(Vec<Entry>, i64), ErrorKind>),
    /// Changes from the watch on the prefix.
    Changed(Vec<Change>),
    /// The watch ended (a compaction, a lost connection): list again.
    WatchLost,
    /// etcd said the session's lease does not exist (a campaign or keepalive on a lease that
    /// expired or was revoked): its key is gone with it.
    LeaseGone,
    /// The answer to [`Action::Resign`].
    Resigned(Result<(), ErrorKind>),
    /// The answer to [`Action::Revoke`].
    Revoked(Result<(), ErrorKind>),
    /// Give up: resign and revoke (or abandon, without `release_on_cancel`), then finish.
    Cancel,
    /// The work of the ended term has stopped ([`Action::StoppedLeading`]).
    Drained,
    /// Leave the queue (stepping down if leading) and stay out for `hold_off`.
    StepDown {
        /// How long to stay out of the queue.
        hold_off: Duration,
    },
    /// End a hold-off now.
    Resume,
    /// Hand leadership to `to`, which must be next in the queue.
    Transfer {
        /// The identity (key value) of the candidate to hand over to.
        to: String,
    },
    /// On a shared session ([`Queue::on_session`]): the session's lease is alive, its last
    /// answered keepalive was sent at `sent` ([`crate::session::Action::Alive`]).
    SessionAlive {
        /// The lease.
        lease: i64,
        /// The TTL etcd answered.
        ttl: Duration,
        /// The send time of the last answered keepalive or grant.
        sent: Tick,
    },
    /// On a shared session: the lease is gone, with this candidate's key on it.
    SessionLost {
        /// The lease.
        lease: i64,
    },
}

/// What the machine asks the driver to do.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Grant a lease of `ttl` (the session).
    Grant {
        /// The TTL to ask for.
        ttl: Duration,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Send one keepalive for `lease`.
    KeepAlive {
        /// The session's lease.
        lease: i64,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Put `key` with `value` on `lease` unless it exists (`create_revision == 0`), and answer
    /// its create revision either way, as `concurrency.Election.Campaign` does.
    Campaign {
        /// `<name>/<lease hex>`.
        key: String,
        /// The proposal: this candidate's identity.
        value: String,
        /// The session's lease.
        lease: i64,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Read every key under the prefix.
    List {
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Watch the prefix from `revision` (inclusive), replacing any earlier watch.
    Watch {
        /// The first revision to report.
        revision: i64,
    },
    /// Stop watching.
    Unwatch,
    /// Delete `key` if it still has `create_revision` (`Election.Resign`).
    Resign {
        /// This candidate's key.
        key: String,
        /// Its create revision.
        create_revision: i64,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Revoke `lease` (its keys go with it).
    Revoke {
        /// The session's lease.
        lease: i64,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Revoke `lease`, best effort, reporting nothing back: a session given up on (expired by
    /// this candidate's clock) whose key may still block the queue on the server.
    RevokeStale {
        /// The abandoned lease.
        lease: i64,
        /// When to give up.
        deadline: Tick,
    },
    /// This candidate leads; act with `token`.
    StartedLeading {
        /// The create revision of its key.
        token: FencingToken,
    },
    /// Stop acting now; answer [`Event::Drained`] once the work has stopped.
    StoppedLeading {
        /// The token of the term that ended.
        token: FencingToken,
        /// Why.
        reason: StepDown,
    },
    /// The queue's first key names a new leader (empty: none).
    NewLeader {
        /// Its value.
        identity: String,
    },
    /// A key under the prefix that no candidate will ever delete (it has no lease). It blocks
    /// everyone queued after it, Go candidates too, until it is deleted by hand.
    StrayKey {
        /// The key.
        key: String,
    },
    /// A transfer was asked to a candidate that is not next in the queue; nothing changed.
    TransferRefused {
        /// The identity asked for.
        to: String,
        /// The identity that is next, if any.
        next: Option<String>,
    },
    /// Done: no key, no session (or one left to expire).
    Finished,
}

/// The session: an etcd lease kept alive.
#[derive(Clone, Debug)]
struct Session {
    lease: i64,
    ttl: Duration,
    /// Send time of the last grant or keepalive that was answered with the lease alive.
    last_ok_sent: Tick,
    /// When the next keepalive is due.
    keep_alive_at: Tick,
    /// Send time of the keepalive in flight.
    in_flight: Option<Tick>,
}

/// Where this candidate stands.
#[derive(Clone, Debug, PartialEq, Eq)]
enum State {
    /// Not queued: getting a session, or waiting out a hold-off or a retry.
    Out,
    /// The campaign request is in flight (or due again after a failure).
    Campaigning,
    /// Queued with `rev`: waiting for every earlier key to go.
    Queued { rev: i64 },
    /// Leading with `rev` (the token).
    Leading { rev: i64 },
    /// The term with `rev` ended; waiting for the work to stop.
    Draining { rev: i64, then: After },
    /// Deleting the key `rev` (after a term, a step-down, or a cancel).
    Resigning { rev: i64, then: After },
    /// Revoking the session (cancelled).
    Revoking,
    /// Finished.
    Done,
}

/// What comes after the key is gone.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    /// Queue again with a new key (same session if it is alive).
    Requeue,
    /// Stay out until the hold-off ends, then queue again.
    HoldOff,
    /// Revoke the session and finish.
    Finish,
}

/// The request in flight, other than keepalives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Grant { sent: Tick },
    Campaign { lease: i64 },
    List,
    Resign,
    Revoke,
}

/// One candidate in one etcd election. See the [module docs](self).
#[derive(Debug)]
pub struct Queue {
    /// Shared: a process in 100,000 elections holds one copy.
    identity: Arc<str>,
    /// `<name>/`.
    prefix: String,
    /// Shared, as the identity.
    timing: Arc<Timing>,
    state: State,
    session: Option<Session>,
    op: Option<Op>,
    /// When a failed request (or the next step after a hold-off) is tried again.
    retry_at: Option<Tick>,
    /// The queue as listed and watched: create revision -> entry.
    queue: Line,
    /// Whether `queue` is current (listed, and the watch has not been lost since).
    listed: bool,
    watching: bool,
    reported_leader: Option<String>,
    reported_strays: Vec<String>,
    hold_off_until: Option<Tick>,
    cancelling: bool,
    /// When the watch was last lost: losses in a row list again after a retry period.
    watch_lost_at: Option<Tick>,
    /// The session is shared ([`Queue::on_session`]): not this machine's to grant, keep alive
    /// or revoke.
    shared: bool,
    /// On a shared session: the last lease this machine gave up on, never taken up again (a
    /// late report of it alive must not bring back a term's key).
    dropped: Option<i64>,
}

// === impl Queue ===

impl Queue {
    /// A candidate `identity` in the election `name` (its keys live under `name/`).
    ///
    /// The session's TTL is the lease duration (whole seconds); a leader stops at the renew
    /// deadline after the last answered keepalive's send time; keepalives go every
    /// [`Timing::renew_interval`], and every failed request is tried again after the retry
    /// period.
    pub fn new(identity: impl Into<Arc<str>>, name: &str, timing: impl Into<Arc<Timing>>) -> Self {
        Self {
            identity: identity.into(),
            prefix: format!("{name}/"),
            timing: timing.into(),
            state: State::Out,
            session: None,
            op: None,
            retry_at: None,
            queue: Line::default(),
            listed: false,
            watching: false,
            reported_leader: None,
            reported_strays: Vec::new(),
            hold_off_until: None,
            cancelling: false,
            watch_lost_at: None,
            shared: false,
            dropped: None,
        }
    }

    /// A candidate on a session that many elections share ([`crate::session`]): it takes the
    /// session's lease from [`Event::SessionAlive`] and [`Event::SessionLost`] and never grants,
    /// keeps alive or revokes it. Its term is bounded as on a session of its own: the renew
    /// deadline after the send time of the session's last answered keepalive.
    ///
    /// Leaving the election always deletes the key (the session lives on, so a key left to
    /// expire would stay): [`Timing::release_on_cancel`] does not apply.
    pub fn on_session(
        identity: impl Into<Arc<str>>,
        name: &str,
        timing: impl Into<Arc<Timing>>,
    ) -> Self {
        Self {
            shared: true,
            ..Self::new(identity, name, timing)
        }
    }

    /// The key this candidate puts with its session's lease: `<name>/<lease hex>`, as
    /// `concurrency.Election` names it.
    pub fn key_for(&self, lease: i64) -> String {
        format!("{}{lease:x}", self.prefix)
    }

    /// The election's prefix, `<name>/`: the driver lists and watches it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The role for status.
    pub fn role(&self) -> Role {
        match self.state {
            State::Leading { .. } => Role::Leader,
            State::Done => Role::Stopped,
            _ => Role::Standby,
        }
    }

    /// The identity of the leader as last seen (the first key's value), if any.
    pub fn leader(&self) -> Option<&str> {
        self.queue.0.first().map(|e| e.value.as_str())
    }

    /// The identity of the candidate queued right after this one, if any: the only target a
    /// transfer can have.
    pub fn next_in_line(&self) -> Option<&str> {
        let rev = self.own_rev()?;
        self.queue
            .0
            .iter()
            .find(|e| e.create_revision > rev)
            .map(|e| e.value.as_str())
    }

    /// While leading: the term's token.
    pub fn fencing_token(&self) -> Option<FencingToken> {
        match self.state {
            State::Leading { rev } => Some(token(rev)),
            _ => None,
        }
    }

    /// While leading: when the term ends unless a keepalive is answered first (the send time
    /// of the last answered one plus the renew deadline).
    pub fn leading_until(&self) -> Option<Tick> {
        match (&self.state, &self.session) {
            (State::Leading { .. }, Some(s)) => Some(s.last_ok_sent + self.term_bound(s)),
            _ => None,
        }
    }

    /// How long after a keepalive's send a leader may act: the renew deadline, and never more
    /// than nine tenths of the TTL etcd granted (which counts from the keepalive's receipt).
    fn term_bound(&self, s: &Session) -> Duration {
        self.timing.renew_deadline.min(s.ttl - s.ttl / 10)
    }

    /// The next time the machine wants a [`Event::Timer`].
    pub fn deadline(&self) -> Option<Tick> {
        let mut at = self.retry_at;
        let mut earliest = |t: Tick| at = Some(at.map_or(t, |a| a.min(t)));
        if let Some(s) = &self.session {
            if s.in_flight.is_none() && !self.shared {
                earliest(s.keep_alive_at);
            }
            // A standby's session that was not renewed in time is gone on the server.
            earliest(s.last_ok_sent + s.ttl);
        }
        if let Some(until) = self.leading_until() {
            earliest(until);
        }
        if let Some(h) = self.hold_off_until {
            earliest(h);
        }
        at
    }

    /// Feeds one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Tick) -> Vec<Action> {
        let mut out = Vec::new();
        if self.state == State::Done {
            return out;
        }
        // Whatever arrives, a leader past its term stops first: a busy stream of answers and
        // watch events must not hold off the step-down until a timer gets its turn.
        if let (State::Leading { rev }, Some(until)) = (&self.state, self.leading_until())
            && now >= until
        {
            let rev = *rev;
            self.end_term(rev, StepDown::DeadlineExceeded, After::Requeue, &mut out);
        }
        match event {
            Event::Start => self.step(now, &mut out),
            Event::Timer => self.on_timer(now, &mut out),
            Event::Granted(r) => self.on_granted(r, now, &mut out),
            Event::KeptAlive(r) => self.on_kept_alive(r, now, &mut out),
            Event::Campaigned(r) => self.on_campaigned(r, now, &mut out),
            Event::Listed(r) => self.on_listed(r, now, &mut out),
            Event::Changed(changes) => {
                for c in changes {
                    match c {
                        Change::Put(e) => {
                            self.queue.put(e);
                        }
                        Change::Delete { key } => self.queue.0.retain(|e| e.key != key),
                    }
                }
                self.evaluate(now, &mut out);
            }
            Event::WatchLost => {
                self.watching = false;
                self.listed = false;
                // Lost again soon after the last loss: list after a retry period, not at once.
                if self
                    .watch_lost_at
                    .is_some_and(|at| now < at + self.timing.retry_period)
                    && self.op.is_none()
                {
                    self.retry_at = Some(now + self.timing.retry_period);
                }
                self.watch_lost_at = Some(now);
                self.step(now, &mut out);
            }
            Event::LeaseGone => {
                if matches!(self.op, Some(Op::Campaign { .. })) {
                    self.op = None;
                }
                self.lease_gone(&mut out);
            }
            Event::Resigned(r) => self.on_resigned(r, now, &mut out),
            Event::Revoked(r) => {
                self.op = None;
                if r.is_err() && self.session_alive(now) {
                    // The lease expires on its own at worst; try again while that matters.
                    self.retry_at = Some(now + self.timing.retry_period);
                    return out;
                }
                self.finish(&mut out);
            }
            Event::Cancel => self.on_cancel(now, &mut out),
            Event::Drained => {
                if let State::Draining { rev, then } = self.state {
                    self.state = State::Resigning { rev, then };
                    if then == After::Finish && !self.shared {
                        // Revoking the lease deletes the key with it, in one request (or,
                        // without release, the key goes when the lease expires).
                        self.state = State::Revoking;
                    } else if self.listed && !self.queue.has(rev) {
                        // Deleted already (by someone else, or expired): nothing to resign.
                        self.key_gone(now, &mut out);
                    }
                }
            }
            Event::StepDown { hold_off } => {
                self.hold_off_until = Some(now + hold_off);
                self.leave(StepDown::Requested, After::HoldOff, now, &mut out);
            }
            Event::Resume => {
                self.hold_off_until = None;
                self.step(now, &mut out);
            }
            Event::SessionAlive { lease, ttl, sent } => {
                if self.shared && self.dropped != Some(lease) && now < sent + ttl {
                    if self.session.as_ref().is_some_and(|s| s.lease != lease) {
                        // A new lease: the old one is gone, with the key on it.
                        self.lease_gone(&mut out);
                    }
                    let s = self.session.get_or_insert(Session {
                        lease,
                        ttl,
                        last_ok_sent: sent,
                        keep_alive_at: sent,
                        in_flight: None,
                    });
                    s.last_ok_sent = s.last_ok_sent.max(sent);
                    s.ttl = ttl;
                    // A candidate first in the queue with a stale session may act now.
                    if self.listed {
                        self.evaluate(now, &mut out);
                    }
                }
            }
            Event::SessionLost { lease } => {
                if self.session.as_ref().is_some_and(|s| s.lease == lease) {
                    self.lease_gone(&mut out);
                }
            }
            Event::Transfer { to } => {
                let next = self.next_in_line().map(str::to_owned);
                if matches!(self.state, State::Leading { .. }) && next.as_deref() == Some(&to) {
                    // The next key is the target's: once this one goes, it leads, and nobody
                    // can queue before it. Stay out for a lease, so as not to queue at once.
                    self.hold_off_until = Some(now + self.timing.lease_duration);
                    self.leave(StepDown::Transferred { to }, After::HoldOff, now, &mut out);
                } else {
                    out.push(Action::TransferRefused { to, next });
                }
            }
        }
        // Whatever the event, the next request the state calls for (none while one is in
        // flight or a retry is pending).
        if self.state != State::Done {
            self.step(now, &mut out);
        }
        out
    }

    // --- transitions ---------------------------------------------------------------------

    fn request_deadline(&self, now: Tick) -> Tick {
        let d = now + self.timing.renew_deadline / 4;
        // A leader's requests never outlive its term.
        self.leading_until().map_or(d, |u| d.min(u.max(now)))
    }

    fn session_alive(&self, now: Tick) -> bool {
        self.session
            .as_ref()
            .is_some_and(|s| now < s.last_ok_sent + s.ttl)
    }

    fn own_rev(&self) -> Option<i64> {
        match self.state {
            State::Queued { rev }
            | State::Leading { rev }
            | State::Draining { rev, .. }
            | State::Resigning { rev, .. } => Some(rev),
            _ => None,
        }
    }

    /// Does the next thing the state calls for, if no request is in flight.
    fn step(&mut self, now: Tick, out: &mut Vec<Action>) {
        if self.op.is_some() || self.retry_at.is_some_and(|r| now < r) {
            return;
        }
        self.retry_at = None;
        match self.state.clone() {
            State::Out => {
                if self.cancelling {
                    return self.revoke_or_finish(now, out);
                }
                if self.hold_off_until.is_some_and(|h| now < h) {
                    return;
                }
                self.hold_off_until = None;
                match &self.session {
                    Some(_) if self.session_alive(now) => {
                        self.state = State::Campaigning;
                        self.step(now, out);
                    }
                    // The shared session's next lease comes as an event.
                    _ if self.shared => {}
                    _ => {
                        self.session = None;
                        self.op = Some(Op::Grant { sent: now });
                        out.push(Action::Grant {
                            ttl: self.timing.lease_duration,
                            deadline: self.request_deadline(now),
                        });
                    }
                }
            }
            State::Campaigning => {
                let Some(lease) = self.session.as_ref().map(|s| s.lease) else {
                    self.state = State::Out;
                    return self.step(now, out);
                };
                self.op = Some(Op::Campaign { lease });
                out.push(Action::Campaign {
                    key: self.key_for(lease),
                    value: self.identity.to_string(),
                    lease,
                    deadline: self.request_deadline(now),
                });
            }
            State::Queued { .. } | State::Leading { .. } => {
                if !self.listed {
                    self.op = Some(Op::List);
                    out.push(Action::List {
                        deadline: self.request_deadline(now),
                    });
                }
            }
            State::Resigning { rev, .. } => {
                let Some(lease) = self.session.as_ref().map(|s| s.lease) else {
                    return self.key_gone(now, out);
                };
                if !self.session_alive(now) {
                    // Expired on the server, key and all.
                    self.session = None;
                    return self.key_gone(now, out);
                }
                self.op = Some(Op::Resign);
                out.push(Action::Resign {
                    key: self.key_for(lease),
                    create_revision: rev,
                    deadline: self.request_deadline(now),
                });
            }
            State::Revoking => self.revoke_or_finish(now, out),
            State::Draining { .. } | State::Done => {}
        }
    }

    fn on_timer(&mut self, now: Tick, out: &mut Vec<Action>) {
        // A leader whose last answered keepalive is a renew deadline old stops first of all.
        if let (State::Leading { rev }, Some(until)) = (&self.state, self.leading_until())
            && now >= until
        {
            let rev = *rev;
            self.end_term(rev, StepDown::DeadlineExceeded, After::Requeue, out);
        }
        if let Some(s) = &self.session
            && now >= s.last_ok_sent + s.ttl
        {
            // Gone on the server, with this candidate's key, or about to be (the server counts
            // from the keepalive's receipt): revoke it to be sure it does not block the queue,
            // and start over with a new session. (A shared one is its keeper's to revoke.)
            if self.shared {
                self.dropped = Some(s.lease);
            } else {
                out.push(Action::RevokeStale {
                    lease: s.lease,
                    deadline: self.request_deadline(now),
                });
            }
            self.session = None;
            if let Some(rev) = self.own_rev() {
                if let State::Leading { .. } = self.state {
                    self.end_term(rev, StepDown::DeadlineExceeded, After::Requeue, out);
                }
                if !matches!(self.state, State::Draining { .. }) {
                    self.queue.0.retain(|e| e.create_revision != rev);
                    self.state = State::Out;
                    if matches!(self.op, Some(Op::Resign)) {
                        self.op = None;
                    }
                }
            }
        }
        if let Some(s) = &mut self.session
            && s.in_flight.is_none()
            && now >= s.keep_alive_at
            && !self.shared
        {
            s.in_flight = Some(now);
            let lease = s.lease;
            let deadline = self.request_deadline(now);
            out.push(Action::KeepAlive { lease, deadline });
        }
        self.step(now, out);
    }

    fn on_granted(
        &mut self,
        r: Result<(i64, Duration), ErrorKind>,
        now: Tick,
        out: &mut Vec<Action>,
    ) {
        let Some(Op::Grant { sent }) = self.op else {
            return;
        };
        self.op = None;
        match r {
            Ok((lease, ttl)) => {
                self.session = Some(Session {
                    lease,
                    ttl,
                    last_ok_sent: sent,
                    keep_alive_at: sent + self.timing.renew_interval(),
                    in_flight: None,
                });
                if self.cancelling {
                    self.state = State::Revoking;
                }
            }
            Err(_) => self.retry_at = Some(now + self.timing.retry_period),
        }
        self.step(now, out);
    }

    fn on_kept_alive(
        &mut self,
        r: Result<Option<Duration>, ErrorKind>,
        now: Tick,
        out: &mut Vec<Action>,
    ) {
        let Some(s) = &mut self.session else {
            return;
        };
        let Some(sent) = s.in_flight.take() else {
            return;
        };
        match r {
            Ok(Some(ttl)) => {
                s.last_ok_sent = s.last_ok_sent.max(sent);
                s.ttl = ttl;
                s.keep_alive_at = sent + self.timing.renew_interval();
                // A candidate first in the queue with a stale session may act now.
                self.evaluate(now, out);
            }
            Ok(None) => self.lease_gone(out),
            Err(_) => s.keep_alive_at = now + self.timing.retry_period,
        }
        self.step(now, out);
    }

    fn on_campaigned(&mut self, r: Result<i64, ErrorKind>, now: Tick, out: &mut Vec<Action>) {
        let Some(Op::Campaign { lease }) = self.op else {
            return;
        };
        self.op = None;
        if self.session.as_ref().is_none_or(|s| s.lease != lease) {
            // The session was given up on meanwhile: the key may have landed on its lease.
            if r.is_ok() && !self.shared {
                out.push(Action::RevokeStale {
                    lease,
                    deadline: self.request_deadline(now),
                });
            }
            if self.state == State::Campaigning {
                self.state = if self.cancelling {
                    State::Revoking
                } else {
                    State::Out
                };
            }
            return self.step(now, out);
        }
        match r {
            Ok(rev) if self.state == State::Campaigning => {
                self.state = State::Queued { rev };
                if self.cancelling {
                    self.state = self.release(rev);
                } else if self.hold_off_until.is_some_and(|h| now < h) {
                    self.state = State::Resigning {
                        rev,
                        then: After::HoldOff,
                    };
                } else {
                    // The key is new: list, so that the queue is known as of a revision that
                    // has it (a watch from an older listing would show it too, but a listing
                    // from before it would not).
                    self.listed = false;
                }
            }
            Ok(_) => {}
            // Timed out or failed: the put may have landed. Campaigning again is idempotent
            // (same key, same lease: it answers the existing key's create revision).
            Err(_) => self.retry_at = Some(now + self.timing.retry_period),
        }
        self.step(now, out);
    }

    fn on_listed(
        &mut self,
        r: Result<(Vec<Entry>, i64), ErrorKind>,
        now: Tick,
        out: &mut Vec<Action>,
    ) {
        if self.op != Some(Op::List) {
            return;
        }
        self.op = None;
        match r {
            Ok((entries, revision)) => {
                self.queue = Line(entries);
                self.queue.0.sort_unstable_by_key(|e| e.create_revision);
                self.listed = true;
                // Every change after the listing, in order: the view stays exact.
                self.watching = true;
                out.push(Action::Watch {
                    revision: revision + 1,
                });
                self.evaluate(now, out);
            }
            Err(_) => {
                self.retry_at = Some(now + self.timing.retry_period);
                self.step(now, out);
            }
        }
    }

    fn on_resigned(&mut self, r: Result<(), ErrorKind>, now: Tick, out: &mut Vec<Action>) {
        if self.op != Some(Op::Resign) {
            return;
        }
        self.op = None;
        match r {
            Ok(()) => self.key_gone(now, out),
            Err(_) => {
                self.retry_at = Some(now + self.timing.retry_period);
                self.step(now, out);
            }
        }
    }

    fn on_cancel(&mut self, now: Tick, out: &mut Vec<Action>) {
        if self.cancelling {
            return;
        }
        self.cancelling = true;
        self.hold_off_until = None;
        match self.state.clone() {
            State::Leading { rev } => self.end_term(rev, StepDown::Cancelled, After::Finish, out),
            State::Draining { rev, .. } => {
                self.state = State::Draining {
                    rev,
                    then: After::Finish,
                }
            }
            State::Resigning { rev, .. } => {
                self.state = State::Resigning {
                    rev,
                    then: After::Finish,
                }
            }
            State::Queued { rev } => self.state = self.release(rev),
            State::Out => self.state = State::Revoking,
            // Between a failed campaign and its retry: nothing to wait for.
            State::Campaigning if self.op.is_none() => self.state = State::Revoking,
            State::Campaigning | State::Revoking | State::Done => {}
        }
        if self.op.is_none() {
            self.retry_at = None;
        }
        self.step(now, out);
    }

    /// Leaves the queue: ends a term first, if leading.
    fn leave(&mut self, reason: StepDown, then: After, now: Tick, out: &mut Vec<Action>) {
        match self.state.clone() {
            State::Leading { rev } => self.end_term(rev, reason, then, out),
            State::Queued { rev } => self.state = State::Resigning { rev, then },
            // Between a failed campaign and its retry: do not campaign again.
            State::Campaigning if self.op.is_none() => {
                self.retry_at = None;
                self.state = State::Out;
            }
            // A campaign in flight is resigned when it answers (see `on_campaigned`).
            _ => {}
        }
        self.step(now, out);
    }

    /// etcd no longer has the session's lease, nor the key on it.
    fn lease_gone(&mut self, out: &mut Vec<Action>) {
        if let Some(s) = self.session.take()
            && self.shared
        {
            self.dropped = Some(s.lease);
        }
        if self.state == State::Campaigning {
            self.state = State::Out;
        }
        if let Some(rev) = self.own_rev() {
            if let State::Leading { .. } = self.state {
                self.end_term(rev, StepDown::Deleted, After::Requeue, out);
            }
            if !matches!(self.state, State::Draining { .. }) {
                self.queue.0.retain(|e| e.create_revision != rev);
                self.state = if self.cancelling {
                    State::Revoking
                } else {
                    State::Out
                };
                if matches!(self.op, Some(Op::Resign)) {
                    self.op = None;
                }
            }
        }
    }

    /// How a cancelled candidate queued with `rev` leaves: revoking its own session deletes
    /// the key with it in one request; on a shared session it deletes the key.
    fn release(&self, rev: i64) -> State {
        if self.shared {
            State::Resigning {
                rev,
                then: After::Finish,
            }
        } else {
            State::Revoking
        }
    }

    fn end_term(&mut self, rev: i64, reason: StepDown, then: After, out: &mut Vec<Action>) {
        self.state = State::Draining { rev, then };
        out.push(Action::StoppedLeading {
            token: token(rev),
            reason,
        });
    }

    /// The key is deleted (or expired with the session).
    fn key_gone(&mut self, now: Tick, out: &mut Vec<Action>) {
        let then = match self.state {
            State::Resigning { rev, then } => {
                self.queue.0.retain(|e| e.create_revision != rev);
                then
            }
            _ => After::Requeue,
        };
        self.state = match then {
            After::Finish => State::Revoking,
            After::Requeue | After::HoldOff => State::Out,
        };
        self.step(now, out);
    }

    fn revoke_or_finish(&mut self, now: Tick, out: &mut Vec<Action>) {
        self.state = State::Revoking;
        match &self.session {
            Some(s) if self.timing.release_on_cancel && self.session_alive(now) && !self.shared => {
                let lease = s.lease;
                self.op = Some(Op::Revoke);
                out.push(Action::Revoke {
                    lease,
                    deadline: self.request_deadline(now),
                });
            }
            // Without release, or with a session already gone: the lease expires on its own.
            _ => self.finish(out),
        }
    }

    fn finish(&mut self, out: &mut Vec<Action>) {
        if self.state == State::Done {
            return;
        }
        self.state = State::Done;
        self.session = None;
        if self.watching {
            self.watching = false;
            out.push(Action::Unwatch);
        }
        out.push(Action::Finished);
    }

    /// Decides from the queue: report the leader and strays; lead when first; notice a key
    /// that went away.
    fn evaluate(&mut self, now: Tick, out: &mut Vec<Action>) {
        for e in &self.queue.0 {
            if e.lease == 0 && !self.reported_strays.contains(&e.key) {
                self.reported_strays.push(e.key.clone());
                out.push(Action::StrayKey { key: e.key.clone() });
            }
        }
        // Compared before it is copied: on a shared session every keepalive comes here, for
        // every election.
        if self.reported_leader.as_deref() != Some(self.leader().unwrap_or_default()) {
            let leader = self.leader().unwrap_or_default().to_owned();
            self.reported_leader = Some(leader.clone());
            out.push(Action::NewLeader { identity: leader });
        }
        if !self.listed {
            return;
        }
        match self.state.clone() {
            State::Queued { rev } => {
                if !self.queue.has(rev) {
                    // Deleted by someone else, or expired: queue again.
                    self.state = State::Out;
                    return self.step(now, out);
                }
                // First in the queue, and the last answered keepalive recent enough to act on.
                let fresh = self
                    .session
                    .as_ref()
                    .is_some_and(|s| now < s.last_ok_sent + self.timing.renew_deadline);
                if self.queue.0.first().map(|e| e.create_revision) == Some(rev) && fresh {
                    self.state = State::Leading { rev };
                    out.push(Action::StartedLeading { token: token(rev) });
                }
            }
            State::Leading { rev } if !self.queue.has(rev) => {
                self.end_term(rev, StepDown::Deleted, After::Requeue, out);
                // The key is gone already: nothing to resign.
                if let State::Draining { then, .. } = &mut self.state {
                    *then = After::Requeue;
                }
            }
            _ => {}
        }
    }
}

/// The queue as listed and watched, in create-revision order: a sorted `Vec`, since most
/// elections have a handful of candidates, and a process may hold 100,000 elections.
#[derive(Debug, Default)]
struct Line(Vec<Entry>);

impl Line {
    /// Puts `e` in its place, replacing an entry with the same key (a re-put).
    fn put(&mut self, e: Entry) {
        self.0.retain(|old| old.key != e.key);
        let at = self
            .0
            .partition_point(|old| old.create_revision < e.create_revision);
        if self
            .0
            .get(at)
            .is_some_and(|old| old.create_revision == e.create_revision)
        {
            self.0[at] = e;
        } else {
            self.0.insert(at, e);
        }
    }

    fn has(&self, rev: i64) -> bool {
        self.0
            .binary_search_by_key(&rev, |e| e.create_revision)
            .is_ok()
    }
}

fn token(rev: i64) -> FencingToken {
    FencingToken(u64::try_from(rev).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Duration = Duration::from_secs(1);

    fn ms(n: u64) -> Tick {
        Duration::from_millis(n)
    }

    fn timing() -> Timing {
        Timing {
            lease_duration: 15 * S,
            renew_deadline: 10 * S,
            retry_period: 2 * S,
            release_on_cancel: true,
        }
    }

    fn entry(value: &str, rev: i64, lease: i64) -> Entry {
        Entry {
            key: format!("e/{lease:x}"),
            create_revision: rev,
            value: value.into(),
            lease,
        }
    }

    /// A candidate "me" on lease 0x10 (key `e/10`), queued with create revision `rev` behind
    /// `ahead`, everything at t=0. Returns the machine and the actions of the listing.
    fn queued(rev: i64, ahead: &[Entry]) -> (Queue, Vec<Action>) {
        let mut q = Queue::new("me", "e", timing());
        let t = Duration::ZERO;
        assert_eq!(
            q.handle(Event::Start, t),
            vec![Action::Grant {
                ttl: 15 * S,
                deadline: ms(2500)
            }]
        );
        assert_eq!(
            q.handle(Event::Granted(Ok((0x10, 15 * S))), t),
            vec![Action::Campaign {
                key: "e/10".into(),
                value: "me".into(),
                lease: 0x10,
                deadline: ms(2500)
            }]
        );
        assert_eq!(
            q.handle(Event::Campaigned(Ok(rev)), t),
            vec![Action::List { deadline: ms(2500) }]
        );
        let mut all = ahead.to_vec();
        all.push(entry("me", rev, 0x10));
        let a = q.handle(Event::Listed(Ok((all, rev))), t);
        (q, a)
    }

    fn leader(rev: i64) -> Queue {
        let (q, a) = queued(rev, &[]);
        assert_eq!(
            a,
            vec![
                Action::Watch { revision: rev + 1 },
                Action::NewLeader {
                    identity: "me".into()
                },
                Action::StartedLeading {
                    token: FencingToken(rev as u64)
                },
            ]
        );
        q
    }

    #[test]
    fn grants_a_session_campaigns_lists_and_leads_when_first() {
        let q = leader(7);
        assert_eq!(q.fencing_token(), Some(FencingToken(7)));
        assert_eq!(q.role(), Role::Leader);
        // Leading until the grant's send time plus the renew deadline; a keepalive is due at
        // the renew interval.
        assert_eq!(q.leading_until(), Some(10 * S));
        assert_eq!(q.deadline(), Some(5 * S));
    }

    #[test]
    fn waits_for_every_earlier_key_then_leads_with_its_create_revision() {
        let (mut q, a) = queued(9, &[entry("a", 3, 0xa), entry("b", 5, 0xb)]);
        assert_eq!(
            a,
            vec![
                Action::Watch { revision: 10 },
                Action::NewLeader {
                    identity: "a".into()
                }
            ]
        );
        assert_eq!(q.next_in_line(), None);
        // b goes first: nothing happens but the queue.
        let a = q.handle(
            Event::Changed(vec![Change::Delete { key: "e/b".into() }]),
            S,
        );
        assert_eq!(a, vec![]);
        // Then a: first in the queue, it leads.
        let a = q.handle(
            Event::Changed(vec![Change::Delete { key: "e/a".into() }]),
            2 * S,
        );
        assert_eq!(
            a,
            vec![
                Action::NewLeader {
                    identity: "me".into()
                },
                Action::StartedLeading {
                    token: FencingToken(9)
                }
            ]
        );
    }

    #[test]
    fn a_key_without_a_lease_is_named_and_still_waited_for() {
        let (mut q, a) = queued(9, &[entry("stray", 3, 0)]);
        assert_eq!(
            a,
            vec![
                Action::Watch { revision: 10 },
                Action::StrayKey { key: "e/0".into() },
                Action::NewLeader {
                    identity: "stray".into()
                }
            ]
        );
        // Reported once; never skipped, as Go candidates do not skip it either.
        let a = q.handle(Event::Changed(vec![Change::Put(entry("x", 11, 0x11))]), S);
        assert_eq!(a, vec![]);
        assert_eq!(q.role(), Role::Standby);
    }

    #[test]
    fn keepalives_extend_the_term_and_failures_end_it_at_the_renew_deadline() {
        let mut q = leader(7);
        assert_eq!(
            q.handle(Event::Timer, 5 * S),
            vec![Action::KeepAlive {
                lease: 0x10,
                deadline: ms(7500)
            }]
        );
        // Answered late: the term counts from the send time.
        assert_eq!(q.handle(Event::KeptAlive(Ok(Some(15 * S))), 6 * S), vec![]);
        assert_eq!(q.leading_until(), Some(15 * S));
        assert_eq!(q.deadline(), Some(10 * S));
        // Now every keepalive fails.
        assert_eq!(
            q.handle(Event::Timer, 10 * S),
            vec![Action::KeepAlive {
                lease: 0x10,
                deadline: ms(12500)
            }]
        );
        assert_eq!(
            q.handle(Event::KeptAlive(Err(ErrorKind::Timeout)), ms(12500)),
            vec![]
        );
        assert_eq!(
            q.handle(Event::Timer, ms(14500)),
            vec![Action::KeepAlive {
                lease: 0x10,
                // Never past the end of the term.
                deadline: 15 * S
            }]
        );
        // Any event at the end of the term ends it, not only the timer.
        assert_eq!(
            q.handle(Event::KeptAlive(Err(ErrorKind::Timeout)), 15 * S),
            vec![Action::StoppedLeading {
                token: FencingToken(7),
                reason: StepDown::DeadlineExceeded
            }]
        );
        assert_eq!(q.handle(Event::Timer, 15 * S), vec![]);
        assert_eq!(q.role(), Role::Standby);
        // The work stopped: delete the key, so the term cannot come back; queue again.
        assert_eq!(
            q.handle(Event::Drained, ms(15100)),
            vec![Action::Resign {
                key: "e/10".into(),
                create_revision: 7,
                deadline: ms(17600)
            }]
        );
        assert_eq!(
            q.handle(Event::Resigned(Ok(())), ms(15200)),
            vec![Action::Campaign {
                key: "e/10".into(),
                value: "me".into(),
                lease: 0x10,
                deadline: ms(17700)
            }]
        );
        // A new key: a new create revision, a larger token.
        assert_eq!(
            q.handle(Event::Campaigned(Ok(20)), ms(15300)),
            vec![Action::List {
                deadline: ms(17800)
            }]
        );
    }

    #[test]
    fn a_session_that_was_not_kept_alive_is_replaced_with_a_new_one() {
        let (mut q, _) = queued(9, &[entry("a", 3, 0xa)]);
        // Keepalives fail from the first; the session's TTL runs out at 15 s.
        let mut t = 5 * S;
        loop {
            let a = q.handle(Event::Timer, t);
            if a.iter().any(|a| matches!(a, Action::Grant { .. })) {
                // The old lease is revoked, best effort: on the server it may outlive this
                // candidate's count, and its key would block the queue.
                assert_eq!(
                    a,
                    vec![
                        Action::RevokeStale {
                            lease: 0x10,
                            deadline: t + ms(2500)
                        },
                        Action::Grant {
                            ttl: 15 * S,
                            deadline: t + ms(2500)
                        }
                    ]
                );
                break;
            }
            assert!(matches!(a.as_slice(), [Action::KeepAlive { .. }]), "{a:?}");
            q.handle(Event::KeptAlive(Err(ErrorKind::Failed)), t);
            t = q.deadline().unwrap();
            assert!(t <= 15 * S, "{t:?}");
        }
        assert_eq!(t, 15 * S);
    }

    #[test]
    fn a_lease_gone_on_the_server_ends_the_term_and_starts_a_new_session() {
        let mut q = leader(7);
        q.handle(Event::Timer, 5 * S);
        assert_eq!(
            q.handle(Event::KeptAlive(Ok(None)), ms(5100)),
            vec![Action::StoppedLeading {
                token: FencingToken(7),
                reason: StepDown::Deleted
            }]
        );
        // Nothing to resign: the key went with the lease.
        assert_eq!(
            q.handle(Event::Drained, ms(5200)),
            vec![Action::Grant {
                ttl: 15 * S,
                deadline: ms(7700)
            }]
        );
    }

    #[test]
    fn a_leader_whose_key_is_deleted_by_someone_steps_down_and_queues_again() {
        let mut q = leader(7);
        assert_eq!(
            q.handle(
                Event::Changed(vec![Change::Delete { key: "e/10".into() }]),
                S
            ),
            vec![
                Action::NewLeader {
                    identity: String::new()
                },
                Action::StoppedLeading {
                    token: FencingToken(7),
                    reason: StepDown::Deleted
                }
            ]
        );
        assert_eq!(
            q.handle(Event::Drained, ms(1100)),
            vec![Action::Campaign {
                key: "e/10".into(),
                value: "me".into(),
                lease: 0x10,
                deadline: ms(3600)
            }]
        );
    }

    #[test]
    fn cancel_stops_the_work_then_revokes_the_session_with_its_key() {
        let mut q = leader(7);
        assert_eq!(
            q.handle(Event::Cancel, S),
            vec![Action::StoppedLeading {
                token: FencingToken(7),
                reason: StepDown::Cancelled
            }]
        );
        assert_eq!(
            q.handle(Event::Drained, ms(1300)),
            vec![Action::Revoke {
                lease: 0x10,
                deadline: ms(3800)
            }]
        );
        assert_eq!(
            q.handle(Event::Revoked(Ok(())), ms(1400)),
            vec![Action::Unwatch, Action::Finished]
        );
        assert_eq!(q.role(), Role::Stopped);
        assert_eq!(q.handle(Event::Timer, 2 * S), vec![]);
    }

    #[test]
    fn cancel_without_release_leaves_the_key_to_expire() {
        let mut q = Queue::new(
            "me",
            "e",
            Timing {
                release_on_cancel: false,
                ..timing()
            },
        );
        q.handle(Event::Start, Duration::ZERO);
        q.handle(Event::Granted(Ok((0x10, 15 * S))), Duration::ZERO);
        q.handle(Event::Campaigned(Ok(7)), Duration::ZERO);
        q.handle(
            Event::Listed(Ok((vec![entry("me", 7, 0x10)], 7))),
            Duration::ZERO,
        );
        q.handle(Event::Cancel, S);
        assert_eq!(
            q.handle(Event::Drained, ms(1300)),
            vec![Action::Unwatch, Action::Finished]
        );
    }

    #[test]
    fn a_standby_cancelled_revokes_and_finishes() {
        let (mut q, _) = queued(9, &[entry("a", 3, 0xa)]);
        assert_eq!(
            q.handle(Event::Cancel, S),
            vec![Action::Revoke {
                lease: 0x10,
                deadline: ms(3500)
            }]
        );
        // A failed revoke is tried again while the lease lives.
        assert_eq!(
            q.handle(Event::Revoked(Err(ErrorKind::Failed)), 2 * S),
            vec![]
        );
        assert_eq!(
            q.handle(Event::Timer, 4 * S),
            vec![Action::Revoke {
                lease: 0x10,
                deadline: ms(6500)
            }]
        );
    }

    #[test]
    fn step_down_resigns_sits_out_the_hold_off_and_queues_again() {
        let mut q = leader(7);
        assert_eq!(
            q.handle(Event::StepDown { hold_off: 30 * S }, S),
            vec![Action::StoppedLeading {
                token: FencingToken(7),
                reason: StepDown::Requested
            }]
        );
        assert_eq!(
            q.handle(Event::Drained, ms(1100)),
            vec![Action::Resign {
                key: "e/10".into(),
                create_revision: 7,
                deadline: ms(3600)
            }]
        );
        assert_eq!(q.handle(Event::Resigned(Ok(())), ms(1200)), vec![]);
        // Keepalives go on during the hold-off (the session is kept); no campaign.
        assert_eq!(q.deadline(), Some(5 * S));
        assert_eq!(
            q.handle(Event::Timer, 5 * S),
            vec![Action::KeepAlive {
                lease: 0x10,
                deadline: ms(7500)
            }]
        );
        q.handle(Event::KeptAlive(Ok(Some(15 * S))), ms(5100));
        assert_eq!(q.handle(Event::Resume, 6 * S).len(), 1, "campaigns at once");
    }

    #[test]
    fn transfer_goes_to_the_next_in_line_only() {
        let mut q = leader(7);
        q.handle(
            Event::Changed(vec![
                Change::Put(entry("b", 9, 0xb)),
                Change::Put(entry("c", 12, 0xc)),
            ]),
            S,
        );
        assert_eq!(q.next_in_line(), Some("b"));
        assert_eq!(
            q.handle(Event::Transfer { to: "c".into() }, 2 * S),
            vec![Action::TransferRefused {
                to: "c".into(),
                next: Some("b".into())
            }]
        );
        assert_eq!(q.role(), Role::Leader);
        assert_eq!(
            q.handle(Event::Transfer { to: "b".into() }, 2 * S),
            vec![Action::StoppedLeading {
                token: FencingToken(7),
                reason: StepDown::Transferred { to: "b".into() }
            }]
        );
        assert!(matches!(
            q.handle(Event::Drained, ms(2100)).as_slice(),
            [Action::Resign { .. }]
        ));
        assert_eq!(q.handle(Event::Resigned(Ok(())), ms(2200)), vec![]);
        // b leads once the key is gone; this candidate sits out a lease before queuing again.
        assert_eq!(
            q.handle(
                Event::Changed(vec![Change::Delete { key: "e/10".into() }]),
                ms(2300)
            ),
            vec![Action::NewLeader {
                identity: "b".into()
            }]
        );
        assert_eq!(q.deadline(), Some(5 * S), "a keepalive first");
        q.handle(Event::Timer, 5 * S);
        q.handle(Event::KeptAlive(Ok(Some(15 * S))), ms(5100));
        assert_eq!(q.deadline(), Some(10 * S));
        q.handle(Event::Timer, 10 * S);
        q.handle(Event::KeptAlive(Ok(Some(15 * S))), ms(10100));
        assert_eq!(q.deadline(), Some(15 * S));
        q.handle(Event::Timer, 15 * S);
        assert_eq!(
            q.handle(Event::KeptAlive(Ok(Some(15 * S))), ms(15100)),
            vec![]
        );
        assert_eq!(
            q.deadline(),
            Some(17 * S),
            "the hold-off ends a lease after the request"
        );
        assert!(matches!(
            q.handle(Event::Timer, 17 * S).as_slice(),
            [Action::Campaign { .. }]
        ));
    }

    #[test]
    fn a_lost_watch_lists_again_and_a_failed_campaign_is_tried_again() {
        let (mut q, _) = queued(9, &[entry("a", 3, 0xa)]);
        assert_eq!(
            q.handle(Event::WatchLost, S),
            vec![Action::List { deadline: ms(3500) }]
        );
        let a = q.handle(
            Event::Listed(Ok((vec![entry("me", 9, 0x10)], 30))),
            ms(1100),
        );
        assert_eq!(
            a,
            vec![
                Action::Watch { revision: 31 },
                Action::NewLeader {
                    identity: "me".into()
                },
                Action::StartedLeading {
                    token: FencingToken(9)
                }
            ]
        );

        let mut q = Queue::new("me", "e", timing());
        q.handle(Event::Start, Duration::ZERO);
        q.handle(Event::Granted(Ok((0x10, 15 * S))), Duration::ZERO);
        assert_eq!(
            q.handle(Event::Campaigned(Err(ErrorKind::Timeout)), ms(2500)),
            vec![]
        );
        assert_eq!(q.deadline(), Some(ms(4500)));
        assert!(matches!(
            q.handle(Event::Timer, ms(4500)).as_slice(),
            [Action::Campaign { key, .. }] if key == "e/10"
        ));
    }

    #[test]
    fn a_standby_whose_key_is_deleted_queues_again_and_a_standby_steps_down_by_resigning() {
        let (mut q, _) = queued(9, &[entry("a", 3, 0xa)]);
        assert_eq!(
            q.handle(
                Event::Changed(vec![Change::Delete { key: "e/10".into() }]),
                S
            ),
            vec![Action::Campaign {
                key: "e/10".into(),
                value: "me".into(),
                lease: 0x10,
                deadline: ms(3500)
            }]
        );
        q.handle(Event::Campaigned(Ok(14)), ms(1100));
        q.handle(
            Event::Listed(Ok((vec![entry("a", 3, 0xa), entry("me", 14, 0x10)], 14))),
            ms(1200),
        );
        assert_eq!(
            q.handle(Event::StepDown { hold_off: 10 * S }, 2 * S),
            vec![Action::Resign {
                key: "e/10".into(),
                create_revision: 14,
                deadline: ms(4500)
            }]
        );
        assert_eq!(
            q.handle(Event::Transfer { to: "a".into() }, 2 * S),
            vec![Action::TransferRefused {
                to: "a".into(),
                next: None
            }],
            "only a leader hands over"
        );
    }

    #[test]
    fn first_in_the_queue_with_a_stale_session_waits_for_a_keepalive_before_leading() {
        let (mut q, _) = queued(9, &[entry("a", 3, 0xa)]);
        q.handle(Event::Timer, 5 * S);
        q.handle(Event::KeptAlive(Err(ErrorKind::Timeout)), ms(7500));
        q.handle(Event::Timer, ms(9500));
        // a goes at 10.5 s: the last answered keepalive was sent at 0, a renew deadline ago.
        let a = q.handle(
            Event::Changed(vec![Change::Delete { key: "e/a".into() }]),
            ms(10_500),
        );
        assert_eq!(
            a,
            vec![Action::NewLeader {
                identity: "me".into()
            }]
        );
        assert_eq!(q.role(), Role::Standby);
        // The keepalive sent at 9.5 s is answered: now it may act.
        assert_eq!(
            q.handle(Event::KeptAlive(Ok(Some(15 * S))), ms(10_600)),
            vec![Action::StartedLeading {
                token: FencingToken(9)
            }]
        );
        assert_eq!(q.leading_until(), Some(ms(19_500)));
    }

    #[test]
    fn cancel_during_a_campaign_revokes_when_it_answers() {
        let mut q = Queue::new("me", "e", timing());
        q.handle(Event::Start, Duration::ZERO);
        q.handle(Event::Granted(Ok((0x10, 15 * S))), Duration::ZERO);
        assert_eq!(q.handle(Event::Cancel, ms(100)), vec![]);
        assert_eq!(
            q.handle(Event::Campaigned(Ok(5)), ms(200)),
            vec![Action::Revoke {
                lease: 0x10,
                deadline: ms(2700)
            }]
        );
        assert_eq!(
            q.handle(Event::Revoked(Ok(())), ms(300)),
            vec![Action::Finished]
        );
    }

    #[test]
    fn a_campaign_on_a_lease_etcd_no_longer_has_starts_a_new_session() {
        let mut q = Queue::new("me", "e", timing());
        q.handle(Event::Start, Duration::ZERO);
        q.handle(Event::Granted(Ok((0x10, 15 * S))), Duration::ZERO);
        // Revoked by hand (`etcdctl lease revoke`) before the campaign landed.
        assert_eq!(
            q.handle(Event::LeaseGone, ms(100)),
            vec![Action::Grant {
                ttl: 15 * S,
                deadline: ms(2600)
            }]
        );
    }

    #[test]
    fn a_failed_campaign_is_not_retried_after_a_cancel_or_a_step_down() {
        for (ev, want) in [
            (
                Event::Cancel,
                vec![Action::Revoke {
                    lease: 0x10,
                    deadline: ms(3500),
                }],
            ),
            (Event::StepDown { hold_off: 10 * S }, vec![]),
        ] {
            let mut q = Queue::new("me", "e", timing());
            q.handle(Event::Start, Duration::ZERO);
            q.handle(Event::Granted(Ok((0x10, 15 * S))), Duration::ZERO);
            q.handle(Event::Campaigned(Err(ErrorKind::Timeout)), ms(500));
            assert_eq!(q.handle(ev, S), want);
            let at = q.deadline().unwrap();
            assert!(
                !q.handle(Event::Timer, at)
                    .iter()
                    .any(|a| matches!(a, Action::Campaign { .. })),
                "no campaign at {at:?}"
            );
        }
    }

    #[test]
    fn a_campaign_answered_after_its_session_was_given_up_revokes_that_lease() {
        let mut q = Queue::new("me", "e", timing());
        q.handle(Event::Start, Duration::ZERO);
        q.handle(Event::Granted(Ok((0x10, 15 * S))), Duration::ZERO);
        // The session runs out by this candidate's clock with the campaign still in flight.
        let a = q.handle(Event::Timer, 15 * S);
        assert!(
            a.contains(&Action::RevokeStale {
                lease: 0x10,
                deadline: ms(17_500)
            }),
            "{a:?}"
        );
        // The campaign's answer comes: its key is on the abandoned lease; revoke it again,
        // and start over with a new session.
        let a = q.handle(Event::Campaigned(Ok(30)), ms(15_100));
        assert_eq!(
            a,
            vec![
                Action::RevokeStale {
                    lease: 0x10,
                    deadline: ms(17_600)
                },
                Action::Grant {
                    ttl: 15 * S,
                    deadline: ms(17_600)
                }
            ]
        );
        assert_eq!(q.role(), Role::Standby);
    }

    #[test]
    fn a_watch_lost_again_at_once_is_listed_after_a_retry_period() {
        let (mut q, _) = queued(9, &[entry("a", 3, 0xa)]);
        assert_eq!(
            q.handle(Event::WatchLost, S),
            vec![Action::List { deadline: ms(3500) }]
        );
        q.handle(
            Event::Listed(Ok((vec![entry("a", 3, 0xa), entry("me", 9, 0x10)], 20))),
            ms(1100),
        );
        assert_eq!(q.handle(Event::WatchLost, ms(1200)), vec![]);
        assert_eq!(q.deadline(), Some(ms(3200)));
        assert_eq!(
            q.handle(Event::Timer, ms(3200)),
            vec![Action::List { deadline: ms(5700) }]
        );
    }

    #[test]
    fn the_term_is_bounded_by_the_ttl_etcd_granted_too() {
        let mut q = Queue::new(
            "me",
            "e",
            Timing {
                lease_duration: 5 * S,
                renew_deadline: 4900 * ms(1),
                retry_period: S,
                release_on_cancel: true,
            },
        );
        q.handle(Event::Start, Duration::ZERO);
        q.handle(Event::Granted(Ok((0x10, 5 * S))), Duration::ZERO);
        q.handle(Event::Campaigned(Ok(3)), Duration::ZERO);
        q.handle(
            Event::Listed(Ok((vec![entry("me", 3, 0x10)], 3))),
            Duration::ZERO,
        );
        assert_eq!(q.leading_until(), Some(ms(4500)), "nine tenths of 5 s");
    }

    #[test]
    fn keys_are_named_as_go_names_them() {
        let q = Queue::new("me", "my-election", timing());
        assert_eq!(
            q.key_for(0x694d_99fa_fea8_8404),
            "my-election/694d99fafea88404"
        );
        assert_eq!(q.prefix(), "my-election/");
    }

    /// A candidate "me" on a shared session's lease 0x10 (granted at t=0), leading with `rev`.
    fn shared_leader(rev: i64) -> Queue {
        let mut q = Queue::on_session("me", "e", timing());
        // No session of its own: it waits for the shared one.
        assert_eq!(q.handle(Event::Start, ms(0)), vec![]);
        assert_eq!(q.deadline(), None);
        assert_eq!(
            q.handle(
                Event::SessionAlive {
                    lease: 0x10,
                    ttl: 15 * S,
                    sent: ms(0)
                },
                ms(30)
            ),
            vec![Action::Campaign {
                key: "e/10".into(),
                value: "me".into(),
                lease: 0x10,
                deadline: ms(2530)
            }]
        );
        assert_eq!(
            q.handle(Event::Campaigned(Ok(rev)), ms(40)),
            vec![Action::List { deadline: ms(2540) }]
        );
        assert_eq!(
            q.handle(
                Event::Listed(Ok((vec![entry("me", rev, 0x10)], rev))),
                ms(50)
            ),
            vec![
                Action::Watch { revision: rev + 1 },
                Action::NewLeader {
                    identity: "me".into()
                },
                Action::StartedLeading {
                    token: FencingToken(rev as u64)
                },
            ]
        );
        q
    }

    #[test]
    fn on_a_shared_session_the_term_counts_from_the_sessions_keepalives_and_none_are_sent() {
        let mut q = shared_leader(7);
        assert_eq!(q.leading_until(), Some(10 * S));
        // Only the term's end and the lease's expiry are deadlines: no keepalive of its own.
        assert_eq!(q.deadline(), Some(10 * S));
        assert_eq!(q.handle(Event::Timer, 5 * S), vec![]);
        let alive = |sent| Event::SessionAlive {
            lease: 0x10,
            ttl: 15 * S,
            sent,
        };
        assert_eq!(q.handle(alive(5 * S), ms(5050)), vec![]);
        assert_eq!(q.leading_until(), Some(15 * S));
        // An older report (a coalesced channel) never moves the bound back.
        q.handle(alive(ms(100)), ms(5060));
        assert_eq!(q.leading_until(), Some(15 * S));
        // No answered keepalive for a renew deadline: the term ends.
        assert_eq!(
            q.handle(Event::Timer, 15 * S),
            vec![Action::StoppedLeading {
                token: FencingToken(7),
                reason: StepDown::DeadlineExceeded
            }]
        );
        // The key is resigned (the session may live on), then it queues again.
        assert_eq!(
            q.handle(Event::Drained, ms(15_100)),
            vec![Action::Resign {
                key: "e/10".into(),
                create_revision: 7,
                deadline: ms(17_600)
            }]
        );
        // Expired by this clock: given up on without revoking (the session's keeper does),
        // and not taken up again.
        assert_eq!(q.handle(Event::Timer, 20 * S), vec![]);
        assert_eq!(q.handle(alive(6 * S), ms(20_010)), vec![]);
        assert_eq!(
            q.handle(
                Event::SessionAlive {
                    lease: 0x11,
                    ttl: 15 * S,
                    sent: 20 * S
                },
                ms(20_050)
            ),
            vec![
                // Its own key was the queue: nobody leads now.
                Action::NewLeader {
                    identity: String::new()
                },
                Action::Campaign {
                    key: "e/11".into(),
                    value: "me".into(),
                    lease: 0x11,
                    deadline: ms(22_550)
                }
            ]
        );
    }

    #[test]
    fn on_a_shared_session_a_lost_lease_ends_the_term_and_the_next_lease_queues_anew() {
        let mut q = shared_leader(7);
        assert_eq!(
            q.handle(Event::SessionLost { lease: 0x10 }, S),
            vec![Action::StoppedLeading {
                token: FencingToken(7),
                reason: StepDown::Deleted
            }]
        );
        // Its key went with the lease: nothing to resign, and no lease to campaign on yet.
        assert_eq!(q.handle(Event::Drained, ms(1100)), vec![]);
        assert_eq!(q.role(), Role::Standby);
        // A late report of the lost lease alive is ignored.
        let alive = |lease, sent| Event::SessionAlive {
            lease,
            ttl: 15 * S,
            sent,
        };
        assert_eq!(q.handle(alive(0x10, ms(900)), ms(1200)), vec![]);
        assert_eq!(
            q.handle(alive(0x12, ms(1300)), ms(1400)),
            vec![
                // Its own key was the queue: nobody leads now.
                Action::NewLeader {
                    identity: String::new()
                },
                Action::Campaign {
                    key: "e/12".into(),
                    value: "me".into(),
                    lease: 0x12,
                    deadline: ms(3900)
                }
            ]
        );
        // A new lease reported while queued on the old one: the old key went with it.
        assert_eq!(
            q.handle(Event::Campaigned(Ok(9)), ms(1500)),
            vec![Action::List { deadline: ms(4000) }]
        );
        q.handle(
            Event::Listed(Ok((vec![entry("other", 8, 0x20), entry("me", 9, 0x12)], 9))),
            ms(1600),
        );
        assert_eq!(
            q.handle(alive(0x13, 2 * S), ms(2100)),
            vec![Action::Campaign {
                key: "e/13".into(),
                value: "me".into(),
                lease: 0x13,
                deadline: ms(4600)
            }]
        );
    }

    #[test]
    fn on_a_shared_session_cancel_deletes_the_key_and_never_revokes() {
        for release in [true, false] {
            let mut q = Queue::on_session(
                "me",
                "e",
                Timing {
                    release_on_cancel: release,
                    ..timing()
                },
            );
            q.handle(
                Event::SessionAlive {
                    lease: 0x10,
                    ttl: 15 * S,
                    sent: ms(0),
                },
                ms(10),
            );
            q.handle(Event::Campaigned(Ok(7)), ms(20));
            q.handle(Event::Listed(Ok((vec![entry("me", 7, 0x10)], 7))), ms(30));
            assert_eq!(q.role(), Role::Leader);
            assert_eq!(
                q.handle(Event::Cancel, S),
                vec![Action::StoppedLeading {
                    token: FencingToken(7),
                    reason: StepDown::Cancelled
                }]
            );
            assert_eq!(
                q.handle(Event::Drained, ms(1100)),
                vec![Action::Resign {
                    key: "e/10".into(),
                    create_revision: 7,
                    deadline: ms(3600)
                }]
            );
            assert_eq!(
                q.handle(Event::Resigned(Ok(())), ms(1200)),
                vec![Action::Unwatch, Action::Finished]
            );
        }
        // A standby cancelled deletes its key too.
        let mut q = Queue::on_session("me", "e", timing());
        q.handle(
            Event::SessionAlive {
                lease: 0x10,
                ttl: 15 * S,
                sent: ms(0),
            },
            ms(10),
        );
        q.handle(Event::Campaigned(Ok(9)), ms(20));
        q.handle(
            Event::Listed(Ok((vec![entry("a", 8, 0x20), entry("me", 9, 0x10)], 9))),
            ms(30),
        );
        assert_eq!(
            q.handle(Event::Cancel, S),
            vec![Action::Resign {
                key: "e/10".into(),
                create_revision: 9,
                deadline: ms(3500)
            }]
        );
        // Cancelled before any lease: nothing to delete.
        let mut q = Queue::on_session("me", "e", timing());
        q.handle(Event::Start, ms(0));
        assert_eq!(q.handle(Event::Cancel, S), vec![Action::Finished]);
    }
}
