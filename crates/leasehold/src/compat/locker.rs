//! A blocking-style lock on a Lease, in the shape of Go's `LeaseLocker`.

use crate::{
    Config, Elector, ElectorHandle, Leadership, LockBackend, backend::kubernetes::LeaseLock,
};
use leasehold_core::LeaderRecord;
use std::{sync::Mutex, time::Duration};
use tokio::{task::JoinHandle, time::Instant};
use tokio_util::sync::CancellationToken;

/// Why [`LeaseLocker::lock`] returned without the lock.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum LockerError {
    /// The cancellation token fired before the lock was acquired.
    #[error("cancelled before the lock `{0}` was acquired")]
    Cancelled(String),
    /// The Lease name is not a valid object name (after lowercasing).
    #[error(
        "lease name `{0}` is not a valid object name (letters, digits, '-' and '.', at most 253)"
    )]
    InvalidName(String),
    /// The elector could not be built (invalid identity or timing).
    #[error("invalid lock configuration")]
    Config(#[from] crate::Error),
}

/// Why [`LeaseLocker::check`] failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CheckError {
    /// This locker does not hold the lock (never locked, unlocked, or the term ended).
    #[error("lease `{0}` is not held by this locker")]
    NotHeld(String),
    /// The lease is held but expired by more than the tolerated amount: renewals have stalled.
    #[error("lease `{lease}` expired {by:?} ago, more than the {tolerated:?} tolerated")]
    Expired {
        /// The lease.
        lease: String,
        /// How long ago it expired.
        by: Duration,
        /// The tolerance given.
        tolerated: Duration,
    },
}

struct Held {
    leadership: Leadership,
    handle: ElectorHandle,
    stop: CancellationToken,
    task: JoinHandle<()>,
    /// The record of the term, to release it later by compare-and-swap if needed.
    transitions: i32,
}

/// A lock on a Lease with blocking `lock` and explicit `unlock`, renewed in the background.
///
/// Replaces Go's `LeaseLocker` (`NewLeaseLocker`, `Lock`, `Unlock`, `UnlockWithRetry`,
/// `Check`), on leasehold's elector: the same safety (step-down at the renew deadline, fencing
/// token, watch instead of polling). When a term ends on its own (renewals failed, another
/// holder), the locker stops contending: [`check`](Self::check) then reports
/// [`CheckError::NotHeld`] and [`lock`](Self::lock) must be called again.
pub struct LeaseLocker {
    lock: LeaseLock,
    config: Config,
    unlock_with_retry_period: Duration,
    held: Mutex<Option<Held>>,
}

// === impl LeaseLocker ===

impl LeaseLocker {
    /// A locker for the Lease `namespace/name` held as `owner`, with [`Config::new`]`(owner)`.
    /// The name is lowercased, as Go's `NewLeaseLocker` does. Unlock retries every 2 s.
    #[doc(alias = "NewLeaseLocker")]
    pub fn new(
        client: impl Into<crate::backend::kubernetes::ApiClient>,
        namespace: &str,
        name: &str,
        owner: impl Into<String>,
    ) -> Self {
        Self::with_config(client, namespace, name, Config::new(owner))
    }

    /// A locker for the Lease `namespace/name`, held as `config`'s identity with its durations
    /// (`LeaseDuration`, `RenewDeadline`, `RetryPeriod`, `UseObservedTime`). Its
    /// `release_on_cancel` decides what the token given to [`lock`](Self::lock) does when it
    /// fires after acquisition: release (the default), or abandon the lock to expire. Set it
    /// off only if everything the lock guards has finished by then.
    pub fn with_config(
        client: impl Into<crate::backend::kubernetes::ApiClient>,
        namespace: &str,
        name: &str,
        config: Config,
    ) -> Self {
        Self {
            lock: LeaseLock::new(client, namespace, &name.to_lowercase()),
            config,
            unlock_with_retry_period: Duration::from_secs(2),
            held: Mutex::new(None),
        }
    }

    /// How often [`unlock_with_retry`](Self::unlock_with_retry) tries again.
    #[doc(alias = "UnlockWithRetryPeriod")]
    #[must_use]
    pub fn unlock_with_retry_period(mut self, d: Duration) -> Self {
        self.unlock_with_retry_period = d;
        self
    }

    /// The Lease's name (lowercased).
    pub fn name(&self) -> &str {
        self.lock.name()
    }

    /// Waits until the lock is acquired, then keeps renewing it in the background, and returns
    /// the term's [`Leadership`] (fencing token, loss notification). If already held, returns
    /// the current term at once. When `cancel` fires later, the lock is released (with
    /// [`Config::release_on_cancel`], the default) or abandoned to expire.
    ///
    /// # Errors
    /// [`LockerError::Cancelled`] if `cancel` fires first.
    #[doc(alias = "Lock")]
    pub async fn lock(&self, cancel: &CancellationToken) -> Result<Leadership, LockerError> {
        if let Some(l) = self.current() {
            return Ok(l);
        }
        // Refused here rather than by the API server on every retry while `lock` waits.
        if !crate::backend::kubernetes::is_object_name(self.lock.name()) {
            return Err(LockerError::InvalidName(self.lock.name().to_owned()));
        }
        // Always release on an explicit unlock; `release_on_cancel` decides what `cancel` does.
        let config = self.config.clone().release_on_cancel(true);
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let stop = CancellationToken::new();
        let stop_on_loss = stop.clone();
        let elector = Elector::with_config(self.lock.clone(), config)?
            .on_started_leading(move |l| {
                let _ = tx.send(l);
            })
            // A term that ends on its own ends the locker's hold: no silent re-acquisition.
            .on_stopped_leading(move || stop_on_loss.cancel());
        let handle = elector.handle();
        let task = tokio::spawn(elector.run(stop.clone()));
        let leadership = tokio::select! {
            l = rx.recv() => l,
            () = cancel.cancelled() => None,
        };
        let Some(leadership) = leadership else {
            stop.cancel();
            let _ = task.await;
            return Err(LockerError::Cancelled(self.lock.describe()));
        };
        // The term's own count, not the published status: the status may still show the record
        // before this acquisition, and the unlock fallback's release would then never match.
        let transitions = leadership.transitions();
        // Later cancellation: release, or abandon to expire.
        let (cancel, stop_c, release) = (
            cancel.clone(),
            stop.clone(),
            self.config.timing.release_on_cancel,
        );
        let task = tokio::spawn(async move {
            let mut task = task;
            tokio::select! {
                () = cancel.cancelled() => {
                    if release {
                        stop_c.cancel();
                        let _ = task.await;
                    } else {
                        // Stop renewing without writing anything: the lease runs out.
                        task.abort();
                        let _ = task.await;
                        stop_c.cancel();
                    }
                }
                _ = &mut task => {}
            }
        });
        if let Ok(mut held) = self.held.lock() {
            *held = Some(Held {
                leadership: leadership.clone(),
                handle,
                stop,
                task,
                transitions,
            });
        }
        Ok(leadership)
    }

    fn current(&self) -> Option<Leadership> {
        let held = self.held.lock().ok()?;
        held.as_ref()
            .map(|h| h.leadership.clone())
            .filter(|l| !l.is_lost())
    }

    /// Releases the lock: stops renewing, then writes a released record so others take over at
    /// once. Returns whether the release was written (false if nothing was held, or the
    /// release could not be written before the lease ran out; see
    /// [`unlock_with_retry`](Self::unlock_with_retry)).
    #[doc(alias = "Unlock")]
    pub async fn unlock(&self) -> bool {
        let held = self.held.lock().ok().and_then(|mut h| h.take());
        let Some(held) = held else {
            return false;
        };
        held.stop.cancel();
        let _ = held.task.await;
        let released = held.handle.status().record.is_some_and(|r| r.is_released());
        if released {
            return true;
        }
        // The elector's own release did not land: try once more directly.
        self.release_record(held.transitions).await
    }

    /// Like [`unlock`](Self::unlock), but keeps trying every
    /// [`unlock_with_retry_period`](Self::unlock_with_retry_period) until the release is
    /// written, the record is no longer this term's, or `cancel` fires.
    #[doc(alias = "UnlockWithRetry")]
    pub async fn unlock_with_retry(&self, cancel: &CancellationToken) {
        let transitions = self
            .held
            .lock()
            .ok()
            .and_then(|h| h.as_ref().map(|h| h.transitions));
        if self.unlock().await {
            return;
        }
        let Some(transitions) = transitions else {
            return;
        };
        loop {
            tokio::select! {
                () = cancel.cancelled() => return,
                () = tokio::time::sleep(self.unlock_with_retry_period) => {}
            }
            if self.release_record(transitions).await || !self.still_ours(transitions).await {
                return;
            }
        }
    }

    async fn still_ours(&self, transitions: i32) -> bool {
        match self.lock.get().await {
            Ok(Some(v)) => {
                v.record.holder_identity == self.config.identity
                    && v.record.leader_transitions == transitions
            }
            Ok(None) => false,
            // Cannot tell: keep trying.
            Err(_) => true,
        }
    }

    /// Writes a released record if the Lease still holds this owner's term.
    async fn release_record(&self, transitions: i32) -> bool {
        let Ok(Some(v)) = self.lock.get().await else {
            return false;
        };
        if v.record.holder_identity != self.config.identity
            || v.record.leader_transitions != transitions
        {
            return false;
        }
        let now = jiff::Timestamp::now();
        let released = LeaderRecord::new(String::new(), 1)
            .with_acquire_time(Some(now))
            .with_renew_time(Some(now))
            .with_leader_transitions(transitions);
        self.lock.update(&released, &v.version).await.is_ok()
    }

    /// Checks that the lock is held and its lease has not expired by more than
    /// `max_tolerable_expired`: Go's `LeaseLocker.Check`, client-go's healthz.
    ///
    /// The two errors mean different things. A term ends (and the lock reads as
    /// [`NotHeld`](CheckError::NotHeld)) at its renew deadline, before the lease can expire for
    /// anyone else, whenever the election task runs. [`Expired`](CheckError::Expired) is the
    /// case `Check` exists for in Go: the task has stalled (a starved or blocked runtime), so
    /// nothing ended a term whose lease others may already have taken, and that by more than
    /// the tolerance. A liveness probe should fail on `Expired`; `NotHeld` is a standby.
    ///
    /// # Errors
    /// [`CheckError::NotHeld`] or [`CheckError::Expired`].
    #[doc(alias = "Check")]
    pub fn check(&self, max_tolerable_expired: Duration) -> Result<(), CheckError> {
        let Some(l) = self.current() else {
            return Err(CheckError::NotHeld(self.lock.describe()));
        };
        // Others may take over a lease duration after the last successful renewal's send time,
        // which is `valid_until − renew_deadline`.
        let timing = &self.config.timing;
        let expires = l.valid_until() - timing.renew_deadline + timing.lease_duration;
        let now = Instant::now();
        if now > expires + max_tolerable_expired {
            return Err(CheckError::Expired {
                lease: self.lock.describe(),
                by: now - expires,
                tolerated: max_tolerable_expired,
            });
        }
        Ok(())
    }
}
