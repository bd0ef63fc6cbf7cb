//! Counters an elector keeps about itself, cheap to update (atomics) and rendered in the
//! Prometheus text format by [`Metrics::encode`]. The sidecar serves them on `/metrics`.

use leasehold_core::LockError;
use std::{
    fmt::Write as _,
    sync::{
        Mutex,
        atomic::{AtomicU64, Ordering::Relaxed},
    },
    time::Duration,
};
use tokio::time::Instant;

/// Upper bounds (seconds) of the renew-latency histogram buckets.
const BUCKETS: [f64; 12] = [
    0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The kinds API errors are counted by.
const ERROR_KINDS: [&str; 7] = [
    "conflict",
    "timeout",
    "unavailable",
    "forbidden",
    "corrupt",
    "other",
    "event",
];

/// What an elector counts.
#[derive(Debug, Default)]
pub struct Metrics {
    renew_buckets: [AtomicU64; BUCKETS.len()],
    renew_count: AtomicU64,
    renew_sum_micros: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    terms: AtomicU64,
    leaderless_micros: AtomicU64,
    leaderless_since: Mutex<Option<Instant>>,
}

// === impl Metrics ===

impl Metrics {
    /// Counts one successful renewal that took `d` from send to answer.
    pub(crate) fn renewed(&self, d: Duration) {
        let secs = d.as_secs_f64();
        for (b, le) in self.renew_buckets.iter().zip(BUCKETS) {
            if secs <= le {
                b.fetch_add(1, Relaxed);
            }
        }
        self.renew_count.fetch_add(1, Relaxed);
        self.renew_sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counts a failed request.
    pub(crate) fn failed(&self, e: &LockError) {
        let kind = match e {
            LockError::Conflict { .. } => 0,
            LockError::Unavailable { .. } => 2,
            LockError::Forbidden { .. } => 3,
            LockError::Corrupt { .. } => 4,
            LockError::Other { .. } => 5,
            // Its outcome is unknown, as a timed-out request's is.
            LockError::Ambiguous { .. } => 1,
        };
        self.errors[kind].fetch_add(1, Relaxed);
    }

    /// Counts a request that did not complete before its deadline.
    pub(crate) fn timed_out(&self) {
        self.errors[1].fetch_add(1, Relaxed);
    }

    /// Counts an Event that could not be recorded.
    pub(crate) fn event_failed(&self) {
        self.errors[6].fetch_add(1, Relaxed);
    }

    /// Counts a term this candidate started.
    pub(crate) fn started_term(&self) {
        self.terms.fetch_add(1, Relaxed);
    }

    /// Notes whether the lock, as observed now, has no live holder.
    pub(crate) fn set_leaderless(&self, leaderless: bool, now: Instant) {
        let Ok(mut since) = self.leaderless_since.lock() else {
            return;
        };
        match (*since, leaderless) {
            (None, true) => *since = Some(now),
            (Some(at), false) => {
                self.add_leaderless(now.saturating_duration_since(at));
                *since = None;
            }
            _ => {}
        }
    }

    fn add_leaderless(&self, d: Duration) {
        self.leaderless_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Total time the lock was observed released, absent or unreadable, including now.
    pub fn leaderless(&self) -> Duration {
        let mut d = Duration::from_micros(self.leaderless_micros.load(Relaxed));
        if let Ok(since) = self.leaderless_since.lock()
            && let Some(at) = *since
        {
            d += at.elapsed();
        }
        d
    }

    /// How many terms this candidate has started.
    pub fn terms(&self) -> u64 {
        self.terms.load(Relaxed)
    }

    /// How many renewals succeeded.
    pub fn renewals(&self) -> u64 {
        self.renew_count.load(Relaxed)
    }

    /// Failed requests of `kind` (`conflict`, `timeout`, `unavailable`, `forbidden`, `corrupt`,
    /// `other`, `event`).
    pub fn errors(&self, kind: &str) -> u64 {
        ERROR_KINDS
            .iter()
            .position(|k| *k == kind)
            .map_or(0, |i| self.errors[i].load(Relaxed))
    }

    /// Appends these metrics, and `status`, in the Prometheus text format, labelled with the
    /// election `name`. `leader_election_master_status` is client-go's metric, by its name.
    pub fn encode(&self, name: &str, status: &leasehold_core::Status, out: &mut String) {
        let name = name.replace('\\', "\\\\").replace('"', "\\\"");
        let l = format!("name=\"{name}\"");
        let leading = u8::from(status.role == leasehold_core::Role::Leader);
        let _ = writeln!(
            out,
            "# HELP leader_election_master_status 1 while this candidate leads (client-go's metric).\n# TYPE leader_election_master_status gauge\nleader_election_master_status{{{l}}} {leading}"
        );
        let transitions = status.record.as_ref().map_or(0, |r| r.leader_transitions);
        let _ = writeln!(
            out,
            "# HELP leasehold_lease_transitions The lock's leaseTransitions as last observed.\n# TYPE leasehold_lease_transitions gauge\nleasehold_lease_transitions{{{l}}} {transitions}"
        );
        let _ = writeln!(
            out,
            "# HELP leasehold_terms_total Terms this candidate started leading.\n# TYPE leasehold_terms_total counter\nleasehold_terms_total{{{l}}} {}",
            self.terms()
        );
        let _ = writeln!(
            out,
            "# HELP leasehold_leaderless_seconds_total Time the lock was observed released, absent or unreadable.\n# TYPE leasehold_leaderless_seconds_total counter\nleasehold_leaderless_seconds_total{{{l}}} {:.3}",
            self.leaderless().as_secs_f64()
        );
        let _ = writeln!(
            out,
            "# HELP leasehold_renew_duration_seconds Time from sending a renewal to its success.\n# TYPE leasehold_renew_duration_seconds histogram"
        );
        for (b, le) in self.renew_buckets.iter().zip(BUCKETS) {
            let _ = writeln!(
                out,
                "leasehold_renew_duration_seconds_bucket{{{l},le=\"{le}\"}} {}",
                b.load(Relaxed)
            );
        }
        let count = self.renew_count.load(Relaxed);
        let sum = self.renew_sum_micros.load(Relaxed) as f64 / 1e6;
        let _ = writeln!(
            out,
            "leasehold_renew_duration_seconds_bucket{{{l},le=\"+Inf\"}} {count}\nleasehold_renew_duration_seconds_sum{{{l}}} {sum:.6}\nleasehold_renew_duration_seconds_count{{{l}}} {count}"
        );
        let _ = writeln!(
            out,
            "# HELP leasehold_api_errors_total Failed lock requests, by kind.\n# TYPE leasehold_api_errors_total counter"
        );
        for (i, kind) in ERROR_KINDS.iter().enumerate() {
            let _ = writeln!(
                out,
                "leasehold_api_errors_total{{{l},kind=\"{kind}\"}} {}",
                self.errors[i].load(Relaxed)
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_prometheus_text() {
        let m = Metrics::default();
        m.renewed(Duration::from_millis(3));
        m.renewed(Duration::from_millis(30));
        m.timed_out();
        let status = leasehold_core::Status {
            role: leasehold_core::Role::Leader,
            ..Default::default()
        };
        let mut out = String::new();
        m.encode("my\"app", &status, &mut out);
        assert!(
            out.contains("leader_election_master_status{name=\"my\\\"app\"} 1\n"),
            "{out}"
        );
        assert!(out.contains("le=\"0.005\"} 1\n"), "{out}");
        assert!(out.contains("le=\"0.05\"} 2\n"), "{out}");
        assert!(out.contains("le=\"+Inf\"} 2\n"), "{out}");
        assert!(out.contains("kind=\"timeout\"} 1\n"), "{out}");
        // Every sample line is `name{labels} value`.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
        }
    }
}
