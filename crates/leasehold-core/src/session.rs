//! One etcd session shared by many elections: a state machine with no I/O.
//!
//! A candidate on etcd's queue ([`crate::queue`]) needs a session, an etcd lease kept alive,
//! to attach its key to. One process that takes part in many elections (one per shard, per
//! tenant, per partition) does not need one lease per election: etcd's own `concurrency`
//! package lets any number of elections share one session, and then the process sends one
//! keepalive per interval whatever the number of elections, instead of one per election.
//!
//! This machine keeps that one lease: it grants it, keeps it alive every
//! [`Timing::renew_interval`], and replaces it when etcd says it is gone or when it was not
//! answered for its TTL. It tells the elections what they need to bound their terms:
//! [`Action::Alive`] with the *send time* of the last keepalive that was answered (a leader
//! acts until that plus its renew deadline, as with a session of its own), and
//! [`Action::Lost`] when the lease is gone, with the keys of every election on it.
//!
//! The queues take these as [`crate::queue::Event::SessionAlive`] and
//! [`crate::queue::Event::SessionLost`]; the driver carries out the requests and feeds the
//! answers back, with the time.

use crate::{Timing, lock::ErrorKind, queue::Tick};
use std::time::Duration;

/// What the driver tells the machine.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// Begin: grant the lease.
    Start,
    /// A deadline passed ([`Session::deadline`]).
    Timer,
    /// The answer to [`Action::Grant`]: the lease and the TTL etcd granted.
    Granted(Result<(i64, Duration), ErrorKind>),
    /// The answer to [`Action::KeepAlive`]: the TTL, or `None` if etcd no longer has the lease.
    KeptAlive(Result<Option<Duration>, ErrorKind>),
    /// The elections on the session have all finished: revoke the lease, then finish.
    Close,
    /// The answer to [`Action::Revoke`].
    Revoked(Result<(), ErrorKind>),
}

/// What the machine asks the driver to do, or tells the elections.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Action {
    /// Grant a lease of `ttl`.
    Grant {
        /// The TTL to ask for.
        ttl: Duration,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Send one keepalive for `lease`.
    KeepAlive {
        /// The lease.
        lease: i64,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Revoke `lease`: every key on it goes with it.
    Revoke {
        /// The lease.
        lease: i64,
        /// When to give up on the answer.
        deadline: Tick,
    },
    /// Revoke `lease`, best effort, reporting nothing back: a lease given up on by this
    /// clock whose keys may still be on the server.
    RevokeStale {
        /// The abandoned lease.
        lease: i64,
        /// When to give up.
        deadline: Tick,
    },
    /// Tell the elections: `lease` is alive, its last answered keepalive (or its grant) was
    /// sent at `sent`, and etcd gave it `ttl`.
    Alive {
        /// The lease.
        lease: i64,
        /// The TTL etcd answered.
        ttl: Duration,
        /// The send time of the last answered keepalive or grant.
        sent: Tick,
    },
    /// Tell the elections: `lease` is gone, with every key on it.
    Lost {
        /// The lease.
        lease: i64,
    },
    /// Done: the lease is revoked (or left to expire).
    Finished,
}

#[derive(Clone, Debug)]
struct Held {
    lease: i64,
    ttl: Duration,
    last_ok_sent: Tick,
    keep_alive_at: Tick,
    in_flight: Option<Tick>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Op {
    Grant { sent: Tick },
    Revoke,
}

/// The shared session. See the [module docs](self).
#[derive(Debug)]
pub struct Session {
    timing: Timing,
    held: Option<Held>,
    op: Option<Op>,
    retry_at: Option<Tick>,
    closing: bool,
    done: bool,
}

// === impl Session ===

impl Session {
    /// A session with a lease of [`Timing::lease_duration`], kept alive every
    /// [`Timing::renew_interval`], requests given a quarter of the renew deadline.
    pub fn new(timing: Timing) -> Self {
        Self {
            timing,
            held: None,
            op: None,
            retry_at: None,
            closing: false,
            done: false,
        }
    }

    /// The lease while it is believed alive.
    pub fn lease(&self) -> Option<i64> {
        self.held.as_ref().map(|h| h.lease)
    }

    /// The next time the machine wants a [`Event::Timer`].
    pub fn deadline(&self) -> Option<Tick> {
        let mut at = self.retry_at;
        if let Some(h) = &self.held {
            for t in [
                Some(h.last_ok_sent + h.ttl),
                h.in_flight.is_none().then_some(h.keep_alive_at),
            ]
            .into_iter()
            .flatten()
            {
                at = Some(at.map_or(t, |a| a.min(t)));
            }
        }
        at
    }

    /// Feeds one event at `now`; returns what to do, in order.
    pub fn handle(&mut self, event: Event, now: Tick) -> Vec<Action> {
        let mut out = Vec::new();
        if self.done {
            return out;
        }
        match event {
            Event::Start => {}
            Event::Timer => {
                if let Some(h) = &self.held
                    && now >= h.last_ok_sent + h.ttl
                {
                    // Not answered for a TTL: gone on the server, or about to be. Revoke it
                    // to be sure its keys do not block the queues, and start over.
                    out.push(Action::RevokeStale {
                        lease: h.lease,
                        deadline: self.request_deadline(now),
                    });
                    self.lost(&mut out);
                }
                if let Some(h) = &mut self.held
                    && h.in_flight.is_none()
                    && now >= h.keep_alive_at
                    && !self.closing
                {
                    h.in_flight = Some(now);
                    let lease = h.lease;
                    let deadline = now + self.timing.renew_deadline / 4;
                    out.push(Action::KeepAlive { lease, deadline });
                }
            }
            Event::Granted(r) => {
                let Some(Op::Grant { sent }) = self.op else {
                    return out;
                };
                self.op = None;
                match r {
                    Ok((lease, ttl)) => {
                        self.held = Some(Held {
                            lease,
                            ttl,
                            last_ok_sent: sent,
                            keep_alive_at: sent + self.timing.renew_interval(),
                            in_flight: None,
                        });
                        if !self.closing {
                            out.push(Action::Alive { lease, ttl, sent });
                        }
                    }
                    Err(_) => self.retry_at = Some(now + self.timing.retry_period),
                }
            }
            Event::KeptAlive(r) => {
                let Some(h) = &mut self.held else {
                    return out;
                };
                let Some(sent) = h.in_flight.take() else {
                    return out;
                };
                match r {
                    Ok(Some(ttl)) => {
                        h.last_ok_sent = h.last_ok_sent.max(sent);
                        h.ttl = ttl;
                        h.keep_alive_at = sent + self.timing.renew_interval();
                        out.push(Action::Alive {
                            lease: h.lease,
                            ttl,
                            sent: h.last_ok_sent,
                        });
                    }
                    Ok(None) => self.lost(&mut out),
                    Err(_) => h.keep_alive_at = now + self.timing.retry_period,
                }
            }
            Event::Close => self.closing = true,
            Event::Revoked(_) => {
                // Failed or not, the lease expires on its own at worst, and nothing is on it.
                self.op = None;
                self.held = None;
            }
        }
        self.step(now, &mut out);
        out
    }

    fn request_deadline(&self, now: Tick) -> Tick {
        now + self.timing.renew_deadline / 4
    }

    fn lost(&mut self, out: &mut Vec<Action>) {
        if let Some(h) = self.held.take() {
            out.push(Action::Lost { lease: h.lease });
        }
    }

    fn step(&mut self, now: Tick, out: &mut Vec<Action>) {
        if self.op.is_some() || self.retry_at.is_some_and(|r| now < r) {
            return;
        }
        self.retry_at = None;
        if self.closing {
            match &self.held {
                Some(h) if now < h.last_ok_sent + h.ttl => {
                    self.op = Some(Op::Revoke);
                    out.push(Action::Revoke {
                        lease: h.lease,
                        deadline: self.request_deadline(now),
                    });
                }
                _ => {
                    self.held = None;
                    self.done = true;
                    out.push(Action::Finished);
                }
            }
            return;
        }
        if self.held.is_none() {
            self.op = Some(Op::Grant { sent: now });
            out.push(Action::Grant {
                ttl: self.timing.lease_duration,
                deadline: self.request_deadline(now),
            });
        }
    }
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

    fn alive() -> Session {
        let mut s = Session::new(timing());
        assert_eq!(
            s.handle(Event::Start, ms(0)),
            vec![Action::Grant {
                ttl: 15 * S,
                deadline: ms(2500)
            }]
        );
        assert_eq!(
            s.handle(Event::Granted(Ok((7, 15 * S))), ms(40)),
            vec![Action::Alive {
                lease: 7,
                ttl: 15 * S,
                sent: ms(0)
            }]
        );
        s
    }

    #[test]
    fn keeps_one_lease_alive_and_tells_the_send_time_of_each_answered_keepalive() {
        let mut s = alive();
        // Every renew interval (half the renew deadline), counted from the last send.
        assert_eq!(s.deadline(), Some(5 * S));
        assert_eq!(
            s.handle(Event::Timer, 5 * S),
            vec![Action::KeepAlive {
                lease: 7,
                deadline: ms(7500)
            }]
        );
        // In flight: only the expiry is a deadline.
        assert_eq!(s.deadline(), Some(15 * S));
        assert_eq!(
            s.handle(Event::KeptAlive(Ok(Some(15 * S))), ms(5100)),
            vec![Action::Alive {
                lease: 7,
                ttl: 15 * S,
                sent: 5 * S
            }]
        );
        assert_eq!(s.deadline(), Some(10 * S));
    }

    #[test]
    fn a_failed_keepalive_is_tried_again_and_an_unanswered_lease_is_replaced() {
        let mut s = alive();
        s.handle(Event::Timer, 5 * S);
        assert_eq!(
            s.handle(Event::KeptAlive(Err(ErrorKind::Timeout)), ms(7500)),
            vec![]
        );
        assert_eq!(s.deadline(), Some(ms(9500)));
        s.handle(Event::Timer, ms(9500));
        s.handle(Event::KeptAlive(Err(ErrorKind::Failed)), 10 * S);
        s.handle(Event::Timer, 12 * S);
        s.handle(Event::KeptAlive(Err(ErrorKind::Failed)), ms(12100));
        // A TTL after the grant's send: lost, revoked to be sure, granted anew.
        assert_eq!(
            s.handle(Event::Timer, 15 * S),
            vec![
                Action::RevokeStale {
                    lease: 7,
                    deadline: ms(17500)
                },
                Action::Lost { lease: 7 },
                Action::Grant {
                    ttl: 15 * S,
                    deadline: ms(17500)
                },
            ]
        );
        assert_eq!(s.lease(), None);
    }

    #[test]
    fn a_lease_etcd_no_longer_has_is_lost_and_granted_anew() {
        let mut s = alive();
        s.handle(Event::Timer, 5 * S);
        assert_eq!(
            s.handle(Event::KeptAlive(Ok(None)), ms(5010)),
            vec![
                Action::Lost { lease: 7 },
                Action::Grant {
                    ttl: 15 * S,
                    deadline: ms(7510)
                },
            ]
        );
        // A failed grant is tried again after the retry period.
        assert_eq!(
            s.handle(Event::Granted(Err(ErrorKind::Failed)), 6 * S),
            vec![]
        );
        assert_eq!(s.deadline(), Some(8 * S));
        assert_eq!(
            s.handle(Event::Timer, 8 * S),
            vec![Action::Grant {
                ttl: 15 * S,
                deadline: ms(10_500)
            }]
        );
    }

    #[test]
    fn close_revokes_the_lease_once_and_finishes() {
        let mut s = alive();
        assert_eq!(
            s.handle(Event::Close, 3 * S),
            vec![Action::Revoke {
                lease: 7,
                deadline: ms(5500)
            }]
        );
        assert_eq!(
            s.handle(Event::Revoked(Err(ErrorKind::Timeout)), ms(5500)),
            vec![Action::Finished]
        );
        assert_eq!(s.handle(Event::Timer, 20 * S), vec![]);
        // A session closed before its grant answered revokes what the grant brings.
        let mut s = Session::new(timing());
        s.handle(Event::Start, ms(0));
        assert_eq!(s.handle(Event::Close, ms(1)), vec![]);
        assert_eq!(
            s.handle(Event::Granted(Ok((8, 15 * S))), ms(2)),
            vec![Action::Revoke {
                lease: 8,
                deadline: ms(2502)
            }]
        );
    }
}
