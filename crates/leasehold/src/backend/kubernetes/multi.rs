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
///   [`UNKNOWN_LEADER`]; the record carries the later times and the larger transitions of the
///   two. Whatever the summary, the pair's [`Versioned::change_key`] holds both records as
///   stored, so a change on *either* side counts as a renewal and restarts a standby's wait,
///   as client-go compares the raw bytes of both (a renewal of one side only, or one whose
///   time is below the other side's, would otherwise go unseen).
/// - **write**: the primary first, then the secondary (created if absent), each at the version
///   read. A conflict on the primary is a conflict: the candidate reads again and does not
///   lead. A conflict on the secondary after the primary was written is
///   [`LockError::Ambiguous`]: half the pair is this candidate's, so it must still know the
///   record as its own when it reads it back.
/// - **watch**: both; any change on either leads to a fresh read of both.
/// - **unreadable side**: the pair reads as the readable side, at the pair's version, with the
///   unreadable side's version in the change key, so it is replaced (both sides written) only
///   after the pair stayed unchanged for the readable holder's lease, and the next token
///   follows the readable side's. With no side readable, the pair is [`LockError::Corrupt`] at
///   the pair's version.
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
///
/// The pair's revision is the larger side's (a write to the pair writes the primary first, so
/// the secondary's is the later one when both sides are written): both sides' revisions are
/// the one API server's, and a revision is larger than every earlier write's, to either side.
fn join(p: &Version, s: Option<&Version>) -> Version {
    let v = Version::new(format!(
        "{}|{}",
        p.as_str(),
        s.map(Version::as_str).unwrap_or("")
    ));
    match (p.revision(), s.map(Version::revision)) {
        (Some(p), None) => v.with_revision(p),
        (Some(p), Some(Some(s))) => v.with_revision(p.max(s)),
        // One side without a revision: tokens fall back to the count, for both.
        _ => v,
    }
}

fn split(v: &Version) -> Option<(Version, Option<Version>)> {
    let (p, s) = v.as_str().split_once('|')?;
    let side = |v: &str| match v.parse::<u64>() {
        Ok(n) => Version::new(v).with_revision(n),
        Err(_) => Version::new(v),
    };
    Some((side(p), (!s.is_empty()).then(|| side(s))))
}

/// The record a reader acts on, given both sides, and the pair's change key.
fn combine(p: LeaderRecord, s: Option<&LeaderRecord>) -> (LeaderRecord, String) {
    let mut key = String::from_utf8(p.to_json(true)).unwrap_or_default();
    key.push('\n');
    if let Some(s) = s {
        key.push_str(&String::from_utf8(s.to_json(true)).unwrap_or_default());
    }
    let record = match s {
        None => p,
        Some(s) if *s == p => p,
        // Two holders: nobody known leads. One holder with two different records: someone
        // else wrote one side under that identity; the summary is then no write of its own
        // that a candidate could mistake for one it made.
        Some(s) => LeaderRecord::new(
            if s.holder_identity == p.holder_identity {
                p.holder_identity
            } else {
                UNKNOWN_LEADER.to_owned()
            },
            p.lease_duration_seconds.max(s.lease_duration_seconds),
        )
        .with_acquire_time(p.acquire_time.max(s.acquire_time))
        .with_renew_time(p.renew_time.max(s.renew_time))
        .with_leader_transitions(p.leader_transitions.max(s.leader_transitions)),
    };
    (record, key)
}

/// The version of a side whose record cannot be decoded, if that is what `e` says.
fn corrupt_at(e: &LockError) -> Option<&Version> {
    match e {
        LockError::Corrupt {
            version: Some(v), ..
        } => Some(v),
        _ => None,
    }
}

/// The pair when one side cannot be decoded and the other can: the readable side's record
/// (its holder, lease and transitions, so tokens continue from it), at the pair's version, so
/// that a takeover writes both sides. The key names the unreadable side's version: any change
/// there restarts a standby's wait too, so the unreadable side is replaced only after the pair
/// stayed unchanged for the readable holder's lease.
fn one_side_readable(
    readable: Versioned,
    unreadable: &Version,
    primary_readable: bool,
) -> Versioned {
    let mut key = String::from_utf8(readable.record.to_json(true)).unwrap_or_default();
    key.push_str("\nunreadable at ");
    key.push_str(unreadable.as_str());
    let version = if primary_readable {
        join(&readable.version, Some(unreadable))
    } else {
        join(unreadable, Some(&readable.version))
    };
    Versioned::new(readable.record, version).with_change_key(key)
}

impl<P: LockBackend + Clone, S: LockBackend + Clone> LockBackend for MultiLock<P, S> {
    fn describe(&self) -> String {
        format!(
            "{} + {}",
            self.primary.describe(),
            self.secondary.describe()
        )
    }

    fn carries_handover(&self) -> bool {
        // A transfer writes the same record, mark included, to both sides, and the pair reads
        // as that record only while both sides agree.
        self.primary.carries_handover() && self.secondary.carries_handover()
    }

    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        Box::pin(async move {
            let (p, s) = tokio::join!(self.primary.get(), self.secondary.get());
            let p = match (p, s) {
                (Ok(Some(p)), Ok(s)) => (p, s),
                // The primary is gone: the secondary alone says nothing to older candidates,
                // so the pair reads as absent and is re-created together.
                (Ok(None), _) => return Ok(None),
                (Ok(Some(p)), Err(e)) => {
                    let Some(at) = corrupt_at(&e) else {
                        return Err(e);
                    };
                    tracing::warn!(lock = %self.describe(), error = %crate::display_chain(&e), "one side of the pair cannot be read; the pair reads as the other side");
                    return Ok(Some(one_side_readable(p, at, true)));
                }
                (Err(e), s) => {
                    let Some(at) = corrupt_at(&e).cloned() else {
                        return Err(e);
                    };
                    return match s {
                        Ok(Some(s)) => {
                            tracing::warn!(lock = %self.describe(), error = %crate::display_chain(&e), "one side of the pair cannot be read; the pair reads as the other side");
                            Ok(Some(one_side_readable(s, &at, false)))
                        }
                        // Nothing readable: the pair is unreadable, at a version that writes
                        // (or creates) both sides when it is replaced.
                        // The secondary could not be read for another reason: say that, rather
                        // than report the pair as if the secondary were absent.
                        Err(se) if corrupt_at(&se).is_none() => Err(se),
                        s => {
                            let other = match &s {
                                Ok(_) => None,
                                Err(e) => corrupt_at(e),
                            };
                            let LockError::Corrupt { object, source, .. } = e else {
                                unreachable!("corrupt_at matched")
                            };
                            Err(LockError::Corrupt {
                                object,
                                version: Some(join(&at, other)),
                                source,
                            })
                        }
                    };
                }
            };
            let (p, s) = p;
            let (record, key) = combine(p.record, s.as_ref().map(|s| &s.record));
            Ok(Some(
                Versioned::new(record, join(&p.version, s.as_ref().map(|s| &s.version)))
                    .with_change_key(key),
            ))
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
                Some(sv) => self.secondary.update(&record, &sv).await,
                None => self.secondary.create(&record).await,
            };
            match s {
                Ok(s) => Ok(join(&p, Some(&s))),
                // The primary holds this record now: whoever reads the pair back must not take
                // it for someone else's.
                Err(e @ LockError::Conflict { .. }) => Err(LockError::Ambiguous {
                    op: "update",
                    object: self.describe(),
                    source: format!(
                        "{} was written, but {} changed since it was read ({e})",
                        self.primary.describe(),
                        self.secondary.describe()
                    )
                    .into(),
                }),
                Err(e) => Err(e),
            }
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
        LeaderRecord::new(holder, 15)
            .with_acquire_time(None)
            .with_renew_time(jiff::Timestamp::from_second(renew).ok())
            .with_leader_transitions(transitions)
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

        // The pair's revision (its terms' tokens) is the later side's; without one on either
        // side, none.
        let rv = |n: u64| Version::new(n.to_string()).with_revision(n);
        assert_eq!(join(&rv(12), Some(&rv(34))).revision(), Some(34));
        assert_eq!(join(&rv(40), Some(&rv(34))).revision(), Some(40));
        assert_eq!(join(&rv(12), None).revision(), Some(12));
        assert_eq!(join(&rv(12), Some(&Version::new("x"))).revision(), None);
        let (p, s) = split(&join(&rv(12), Some(&rv(34)))).unwrap();
        assert_eq!((p.revision(), s.unwrap().revision()), (Some(12), Some(34)));
    }

    #[test]
    fn different_holders_read_as_unknown_and_either_renewal_is_a_change() {
        let (a, ka) = combine(rec("old", 100, 3), Some(&rec("new", 200, 5)));
        assert_eq!(a.holder_identity, UNKNOWN_LEADER);
        assert_eq!(a.leader_transitions, 5);
        let (b, kb) = combine(rec("old", 100, 3), Some(&rec("new", 202, 5)));
        assert_ne!(
            a, b,
            "a renewal of the secondary alone changes what readers see"
        );
        assert_ne!(ka, kb);
        let (same, _) = combine(rec("x", 100, 3), Some(&rec("x", 100, 4)));
        assert_eq!(same.holder_identity, "x");
        assert_eq!(same.leader_transitions, 4);
    }

    #[test]
    fn a_change_hidden_by_the_summary_still_changes_the_key() {
        // The primary's stale renewal is later than the secondary's fresh ones (a clock ahead):
        // the summary keeps the later time, so it does not move; the key does.
        let (a, ka) = combine(rec("x", 500, 3), Some(&rec("y", 100, 3)));
        let (b, kb) = combine(rec("x", 500, 3), Some(&rec("y", 101, 3)));
        assert_eq!(a, b, "the summary hides the renewal");
        assert_ne!(ka, kb, "the key does not");
        // One holder on both sides, an identical pair: the record as written.
        let (c, _) = combine(rec("x", 100, 3), Some(&rec("x", 100, 3)));
        assert_eq!(c, rec("x", 100, 3));
    }
}
