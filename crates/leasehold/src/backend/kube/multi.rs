//! Two locks written together, to migrate a fleet from one lock to another without a moment with
//! two leaders (client-go's `resourcelock.MultiLock`: `configmapsleases`, `endpointsleases`).

use futures_util::{StreamExt as _, stream};
use leasehold_core::{
    LeaderRecord, LockBackend, LockError, LockEvent, Version, Versioned,
    lock::{BoxFuture, WatchStream},
};

pub use crate::backend::UNKNOWN_LEADER;

/// A primary and a secondary lock written together.
///
/// Replaces client-go's `resourcelock.MultiLock`. The migration from an annotation lock to a
/// Lease runs in three rolling steps: every candidate on the old lock; then every candidate on
/// `MultiLock::new(old, lease)` (`--lock-type configmapsleases` / `endpointsleases`), which old
/// candidates still respect through the primary; then every candidate on the Lease alone, which
/// multi-lock candidates respect through the secondary.
///
/// Semantics, as client-go's, with compare-and-swap on both objects:
/// - **read**: both records. If they name different holders, the holder reads as
///   [`UNKNOWN_LEADER`] and the record carries the later renew time and the larger transitions
///   of the two, so a renewal on *either* side counts as a change and restarts the wait.
/// - **write**: the primary first, then the secondary (created if absent), each at the version
///   read. A conflict on either is a conflict: the candidate reads again and does not lead.
/// - **watch**: both; any change on either leads to a fresh read of both.
#[derive(Clone)]
pub struct MultiLock<P, S> {
    primary: P,
    secondary: S,
}

// === impl MultiLock ===

impl<P: LockBackend, S: LockBackend> MultiLock<P, S> {
    /// Writes `primary` and `secondary` together; `primary` is the one older candidates use.
    pub fn new(primary: P, secondary: S) -> Self {
        Self { primary, secondary }
    }

    /// The primary lock.
    pub fn primary(&self) -> &P {
        &self.primary
    }

    /// The secondary lock.
    pub fn secondary(&self) -> &S {
        &self.secondary
    }
}

/// Joins two versions into one; resource versions and generations never contain `|`.
fn join(p: &Version, s: Option<&Version>) -> Version {
    Version::new(format!("{}|{}", p.0, s.map(|s| &*s.0).unwrap_or("")))
}

fn split(v: &Version) -> Option<(Version, Option<Version>)> {
    let (p, s) = v.0.split_once('|')?;
    Some((Version::new(p), (!s.is_empty()).then(|| Version::new(s))))
}

/// The record a reader acts on, given both sides.
fn combine(p: LeaderRecord, s: Option<&LeaderRecord>) -> LeaderRecord {
    match s {
        None => p,
        Some(s) if s.holder_identity == p.holder_identity => LeaderRecord {
            leader_transitions: p.leader_transitions.max(s.leader_transitions),
            ..p
        },
        Some(s) => LeaderRecord {
            holder_identity: UNKNOWN_LEADER.to_owned(),
            lease_duration_seconds: p.lease_duration_seconds.max(s.lease_duration_seconds),
            acquire_time: p.acquire_time.max(s.acquire_time),
            renew_time: p.renew_time.max(s.renew_time),
            leader_transitions: p.leader_transitions.max(s.leader_transitions),
        },
    }
}

impl<P: LockBackend + Clone, S: LockBackend + Clone> LockBackend for MultiLock<P, S> {
    fn describe(&self) -> String {
        format!(
            "{} + {}",
            self.primary.describe(),
            self.secondary.describe()
        )
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(async move {
            let (p, s) = tokio::join!(self.primary.get(), self.secondary.get());
            let Some(p) = p? else {
                // The primary is gone: the secondary alone says nothing to older candidates,
                // so the pair reads as absent and is re-created together.
                return Ok(None);
            };
            let s = s?;
            Ok(Some(Versioned {
                version: join(&p.version, s.as_ref().map(|s| &s.version)),
                record: combine(p.record, s.as_ref().map(|s| &s.record)),
            }))
        })
    }

    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        Box::pin(async move {
            let p = self.primary.create(&record).await?;
            // Create, never update: a secondary that exists may be held right now by a
            // candidate that knows only it (the last step of a migration), and this candidate
            // has never read it. An `AlreadyExists` is a conflict, as in client-go's
            // `MultiLock.Create`: the pair then reads as held by an unknown leader (the primary
            // is ours, the secondary not) until the secondary stays unchanged for a lease
            // duration, and is then taken over by an update of both.
            let s = self.secondary.create(&record).await?;
            Ok(join(&p, Some(&s)))
        })
    }

    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        let record = record.clone();
        let version = version.clone();
        Box::pin(async move {
            let Some((pv, sv)) = split(&version) else {
                return Err(LockError::Conflict {
                    op: "update",
                    object: self.describe(),
                });
            };
            let p = self.primary.update(&record, &pv).await?;
            let s = match sv {
                Some(sv) => self.secondary.update(&record, &sv).await?,
                None => self.secondary.create(&record).await?,
            };
            Ok(join(&p, Some(&s)))
        })
    }

    fn watch(&self, version: Option<&Version>) -> WatchStream {
        let (pv, sv) = version
            .and_then(split)
            .map_or((None, None), |(p, s)| (Some(p), s));
        let changes = stream::select(
            self.primary.watch(pv.as_ref()).map(|r| r.map(|_| ())),
            self.secondary.watch(sv.as_ref()).map(|r| r.map(|_| ())),
        );
        let this = self.clone();
        Box::pin(changes.then(move |change| {
            let this = this.clone();
            async move {
                change?;
                this.get().await
            }
        }))
    }

    fn record_event(&self, event: &LockEvent) -> BoxFuture<'_, Result<(), LockError>> {
        let event = event.clone();
        Box::pin(async move {
            let (p, s) = tokio::join!(
                self.primary.record_event(&event),
                self.secondary.record_event(&event)
            );
            p.and(s)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(holder: &str, renew: i64, transitions: i32) -> LeaderRecord {
        LeaderRecord {
            holder_identity: holder.into(),
            lease_duration_seconds: 15,
            acquire_time: None,
            renew_time: jiff::Timestamp::from_second(renew).ok(),
            leader_transitions: transitions,
        }
    }

    #[tokio::test]
    async fn create_never_overwrites_a_secondary_it_has_not_read() {
        use leasehold_testing::mem::MemLock;
        let (primary, secondary) = (MemLock::new(), MemLock::new());
        // A Lease-only candidate holds the secondary; the primary is gone.
        secondary.put(rec("lease-only", 100, 12));
        let multi = MultiLock::new(primary.clone(), secondary.clone());
        assert!(
            multi.get().await.unwrap().is_none(),
            "no primary reads as absent"
        );
        let e = multi.create(&rec("multi", 101, 0)).await.unwrap_err();
        assert!(matches!(e, LockError::Conflict { .. }), "{e:?}");
        assert_eq!(
            secondary.current().unwrap().record.holder_identity,
            "lease-only",
            "the live secondary is untouched"
        );
        // The pair now reads as held by an unknown leader, with the secondary's token.
        let seen = multi.get().await.unwrap().unwrap().record;
        assert_eq!(seen.holder_identity, UNKNOWN_LEADER);
        assert_eq!(seen.leader_transitions, 12);
    }

    #[test]
    fn versions_round_trip() {
        let v = join(&Version::new("12"), Some(&Version::new("34")));
        assert_eq!(
            split(&v),
            Some((Version::new("12"), Some(Version::new("34"))))
        );
        let v = join(&Version::new("12"), None);
        assert_eq!(split(&v), Some((Version::new("12"), None)));
        assert_eq!(split(&Version::new("12")), None);
    }

    #[test]
    fn different_holders_read_as_unknown_and_either_renewal_is_a_change() {
        let a = combine(rec("old", 100, 3), Some(&rec("new", 200, 5)));
        assert_eq!(a.holder_identity, UNKNOWN_LEADER);
        assert_eq!(a.leader_transitions, 5);
        let b = combine(rec("old", 100, 3), Some(&rec("new", 202, 5)));
        assert_ne!(
            a, b,
            "a renewal of the secondary alone changes what readers see"
        );
        let same = combine(rec("x", 100, 3), Some(&rec("x", 100, 4)));
        assert_eq!(same.holder_identity, "x");
        assert_eq!(same.leader_transitions, 4);
    }
}
