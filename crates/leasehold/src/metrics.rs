//! Counters an elector keeps about itself, cheap to update (atomics), and their rendering in the
//! Prometheus text format.
//!
//! A process that runs several electors must serve them as *one* exposition: Prometheus rejects
//! a scrape that describes a metric family twice. [`encode`] writes each family's `# HELP` and
//! `# TYPE` once, with every elector's samples under it, labelled by election name;
//! [`Electors`] keeps a process's electors by name and encodes them the same way.
//! [`Metrics::encode`] is the one-elector case. The sidecar serves this on `/metrics`.
//!
//! With the `prometheus-client` feature, [`Electors`] is also a `prometheus-client`
//! [`Collector`]: register it in the application's own registry and leasehold's families are
//! scraped with the application's metrics.
//!
//! [`Collector`]: https://docs.rs/prometheus-client/0.26/prometheus_client/collector/trait.Collector.html
//!
//! # Families
//! | name | type | labels |
//! |---|---|---|
//! | `leader_election_master_status` | gauge (client-go's metric, by its name) | `name` |
//! | `leasehold_lease_transitions` | gauge | `name` |
//! | `leasehold_terms_total` | counter | `name` |
//! | `leasehold_leaderless_seconds_total` | counter | `name` |
//! | `leasehold_renew_duration_seconds` | histogram | `name`, `le` |
//! | `leasehold_api_errors_total` | counter | `name`, `kind` |

use crate::ElectorHandle;
use leasehold_core::{FailureKind, LockError, Role, Status};
use std::{
    fmt::Write as _,
    sync::{
        Arc, Mutex, PoisonError,
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

const MASTER_STATUS_HELP: &str = "1 while this candidate leads (client-go's metric).";
const TRANSITIONS_HELP: &str = "The lock's leaseTransitions as last observed.";
const TERMS_HELP: &str = "Terms this candidate started leading.";
const OVERRUNS_HELP: &str =
    "Terms whose leader work had not returned when it should have (Elector::run_while_leading).";
const LEADERLESS_HELP: &str = "Time the lock was observed released, absent or unreadable.";
const RENEW_HELP: &str = "Time from sending a renewal to its success.";
const ERRORS_HELP: &str = "Failed lock requests, by kind.";

/// What an elector counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// Renewals by latency, one bucket each, *not* cumulative: `[i]` counts those above
    /// `BUCKETS[i - 1]` up to `BUCKETS[i]`, the last one those above every bound. An exposition
    /// sums them from one read, so its `+Inf` bucket and `_count` are never below a finite
    /// bucket, whatever renewals land while it reads.
    renew_buckets: [AtomicU64; BUCKETS.len() + 1],
    renew_sum_micros: AtomicU64,
    errors: [AtomicU64; ERROR_KINDS.len()],
    terms: AtomicU64,
    work_overruns: AtomicU64,
    /// Completed leaderless time; only changed while `leaderless_since` is locked.
    leaderless_micros: AtomicU64,
    leaderless_since: Mutex<Option<Instant>>,
}

// === impl Metrics ===

impl Metrics {
    /// Counts one successful renewal that took `d` from send to answer.
    pub(crate) fn renewed(&self, d: Duration) {
        let secs = d.as_secs_f64();
        let i = BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(BUCKETS.len());
        self.renew_buckets[i].fetch_add(1, Relaxed);
        self.renew_sum_micros
            .fetch_add(u64::try_from(d.as_micros()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Counts a failed request.
    pub(crate) fn failed(&self, e: &LockError) {
        let kind = match e.failure_kind() {
            FailureKind::Conflict => 0,
            // A partial write's outcome is unknown, as a timed-out request's is.
            FailureKind::Timeout | FailureKind::Partial => 1,
            FailureKind::Unavailable => 2,
            FailureKind::Forbidden => 3,
            FailureKind::Corrupt => 4,
            _ => 5,
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

    /// Counts a term whose leader work had not returned in time.
    pub(crate) fn work_overran(&self) {
        self.work_overruns.fetch_add(1, Relaxed);
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
        // Both read under the lock: a period that ends meanwhile is counted once, not dropped
        // (which would make the counter go back).
        let since = self
            .leaderless_since
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut d = Duration::from_micros(self.leaderless_micros.load(Relaxed));
        if let Some(at) = *since {
            d += at.elapsed();
        }
        d
    }

    /// How many terms this candidate has started.
    pub fn terms(&self) -> u64 {
        self.terms.load(Relaxed)
    }

    /// How many terms' leader work had not returned when it should have (see
    /// [`Elector::run_while_leading`](crate::Elector::run_while_leading)).
    pub fn work_overruns(&self) -> u64 {
        self.work_overruns.load(Relaxed)
    }

    /// How many renewals succeeded.
    pub fn renewals(&self) -> u64 {
        self.renew_buckets.iter().map(|b| b.load(Relaxed)).sum()
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
    /// election `name`: a whole exposition for a process with this one elector. For several,
    /// use [`encode`] (or [`Electors`]) once for all of them: appending one `encode` per
    /// elector would describe each family twice, and Prometheus rejects that scrape.
    pub fn encode(&self, name: &str, status: &Status, out: &mut String) {
        encode(&[Election::new(name, self, status)], out);
    }
}

/// One election's part of an exposition: its name (the `name` label), its elector's counters
/// and status.
#[derive(Clone, Copy, Debug)]
pub struct Election<'a> {
    name: &'a str,
    metrics: &'a Metrics,
    status: &'a Status,
    leading: bool,
}

// === impl Election ===

impl<'a> Election<'a> {
    /// The election `name` with its elector's `metrics` and `status` (from
    /// [`ElectorHandle::metrics`] and [`ElectorHandle::status`]).
    /// `leader_election_master_status` is 1 when `status` says this candidate leads.
    pub fn new(name: &'a str, metrics: &'a Metrics, status: &'a Status) -> Self {
        Self {
            name,
            metrics,
            status,
            leading: status.role == Role::Leader,
        }
    }

    /// Overrides whether this candidate leads, e.g. with [`ElectorHandle::is_leader`], which
    /// also holds the term to its deadline when the election task is stalled.
    #[must_use]
    pub fn leading(mut self, leading: bool) -> Self {
        self.leading = leading;
        self
    }
}

/// One read of an elector's counters: every figure of an exposition comes from it.
struct Snapshot<'a> {
    name: &'a str,
    leading: bool,
    transitions: i32,
    terms: u64,
    work_overruns: u64,
    leaderless: f64,
    /// Per bucket, not cumulative; the last is above every bound.
    renewals: [u64; BUCKETS.len() + 1],
    renew_sum: f64,
    errors: [u64; ERROR_KINDS.len()],
}

// === impl Snapshot ===

impl<'a> Snapshot<'a> {
    fn of(e: &Election<'a>) -> Self {
        let m = e.metrics;
        Self {
            name: e.name,
            leading: e.leading,
            transitions: e.status.record.as_ref().map_or(0, |r| r.leader_transitions),
            terms: m.terms(),
            work_overruns: m.work_overruns(),
            leaderless: m.leaderless().as_secs_f64(),
            renewals: std::array::from_fn(|i| m.renew_buckets[i].load(Relaxed)),
            renew_sum: m.renew_sum_micros.load(Relaxed) as f64 / 1e6,
            errors: std::array::from_fn(|i| m.errors[i].load(Relaxed)),
        }
    }

    /// Renewals in total: `_count` and the `+Inf` bucket.
    fn renew_count(&self) -> u64 {
        self.renewals.iter().sum()
    }
}

/// Appends the metrics of `elections` as one exposition in the Prometheus text format (0.0.4):
/// each family's `# HELP` and `# TYPE` once, then every election's samples, labelled
/// `name="<election name>"`. Label values are escaped as the format says (`\\`, `\"`, `\n`).
///
/// Names must be distinct (include the namespace where two locks share a name): two samples
/// with one label set are rejected by Prometheus too. Writes nothing for no elections.
pub fn encode(elections: &[Election<'_>], out: &mut String) {
    if elections.is_empty() {
        return;
    }
    let snaps: Vec<Snapshot<'_>> = elections.iter().map(Snapshot::of).collect();
    let family = |out: &mut String, name: &str, help: &str, kind: &str| {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
    };
    let sample = |out: &mut String,
                  name: &str,
                  s: &Snapshot<'_>,
                  extra: &str,
                  value: &dyn std::fmt::Display| {
        out.push_str(name);
        out.push_str("{name=\"");
        escape_label_value(s.name, out);
        out.push('"');
        out.push_str(extra);
        let _ = writeln!(out, "}} {value}");
    };

    let name = "leader_election_master_status";
    family(out, name, MASTER_STATUS_HELP, "gauge");
    for s in &snaps {
        sample(out, name, s, "", &u8::from(s.leading));
    }
    let name = "leasehold_lease_transitions";
    family(out, name, TRANSITIONS_HELP, "gauge");
    for s in &snaps {
        sample(out, name, s, "", &s.transitions);
    }
    let name = "leasehold_terms_total";
    family(out, name, TERMS_HELP, "counter");
    for s in &snaps {
        sample(out, name, s, "", &s.terms);
    }
    let name = "leasehold_work_overruns_total";
    family(out, name, OVERRUNS_HELP, "counter");
    for s in &snaps {
        sample(out, name, s, "", &s.work_overruns);
    }
    let name = "leasehold_leaderless_seconds_total";
    family(out, name, LEADERLESS_HELP, "counter");
    for s in &snaps {
        sample(out, name, s, "", &format_args!("{:.3}", s.leaderless));
    }
    family(
        out,
        "leasehold_renew_duration_seconds",
        RENEW_HELP,
        "histogram",
    );
    for s in &snaps {
        let name = "leasehold_renew_duration_seconds_bucket";
        let mut cumulative = 0;
        for (n, le) in s.renewals.iter().zip(BUCKETS) {
            cumulative += n;
            sample(out, name, s, &format!(",le=\"{le}\""), &cumulative);
        }
        let count = s.renew_count();
        sample(out, name, s, ",le=\"+Inf\"", &count);
        let sum = format_args!("{:.6}", s.renew_sum);
        sample(out, "leasehold_renew_duration_seconds_sum", s, "", &sum);
        sample(out, "leasehold_renew_duration_seconds_count", s, "", &count);
    }
    let name = "leasehold_api_errors_total";
    family(out, name, ERRORS_HELP, "counter");
    for s in &snaps {
        for (kind, n) in ERROR_KINDS.iter().zip(s.errors) {
            sample(out, name, s, &format!(",kind=\"{kind}\""), &n);
        }
    }
}

/// Appends `v` escaped as a label value of the text format: `\` as `\\`, `"` as `\"`, a line
/// feed as `\n`.
fn escape_label_value(v: &str, out: &mut String) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

/// The electors of one process, by election name, encoded as one exposition.
///
/// Clones share the set: keep one to [`insert`](Self::insert) and [`remove`](Self::remove)
/// electors as they come and go, and hand another to the HTTP handler (or, with the
/// `prometheus-client` feature, to [`Registry::register_collector`]).
///
/// `leader_election_master_status` comes from [`ElectorHandle::is_leader`], so a candidate
/// whose term's deadline has passed is not reported leading even while its election task is
/// stalled.
///
/// ```
/// use leasehold::{Elector, Timing, backend::file::FileLock, metrics::Electors};
///
/// let electors = Electors::new();
/// for name in ["orders", "billing"] {
///     let lock = FileLock::new(format!("/tmp/{name}.leader.json"));
///     let elector = Elector::new(lock, "replica-1", Timing::default()).unwrap();
///     electors.insert(name, &elector.handle());
/// }
/// let mut exposition = String::new();
/// electors.encode(&mut exposition);
/// assert_eq!(exposition.matches("# TYPE leasehold_terms_total counter").count(), 1);
/// ```
///
/// [`Registry::register_collector`]: https://docs.rs/prometheus-client/0.26/prometheus_client/registry/struct.Registry.html#method.register_collector
#[derive(Clone, Debug, Default)]
pub struct Electors {
    set: Arc<Mutex<Vec<(String, ElectorHandle)>>>,
}

// === impl Electors ===

impl Electors {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds the elector of election `name`, or replaces the one of that name.
    pub fn insert(&self, name: impl Into<String>, handle: &ElectorHandle) {
        let name = name.into();
        let mut set = self.lock();
        match set.iter_mut().find(|(n, _)| *n == name) {
            Some(entry) => entry.1 = handle.clone(),
            None => set.push((name, handle.clone())),
        }
    }

    /// Removes the elector of election `name`; whether there was one.
    pub fn remove(&self, name: &str) -> bool {
        let mut set = self.lock();
        let before = set.len();
        set.retain(|(n, _)| n != name);
        set.len() != before
    }

    /// Appends every elector's metrics as one exposition in the Prometheus text format (see
    /// [`encode`]).
    pub fn encode(&self, out: &mut String) {
        self.with_elections(|elections| encode(elections, out));
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<(String, ElectorHandle)>> {
        self.set.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn with_elections<R>(&self, f: impl FnOnce(&[Election<'_>]) -> R) -> R {
        let set = self.lock();
        let statuses: Vec<(Status, bool)> = set
            .iter()
            .map(|(_, h)| (h.status(), h.is_leader()))
            .collect();
        let elections: Vec<Election<'_>> = set
            .iter()
            .zip(&statuses)
            .map(|((name, h), (status, leading))| {
                Election::new(name, h.metrics(), status).leading(*leading)
            })
            .collect();
        f(&elections)
    }
}

#[cfg(feature = "prometheus-client")]
impl prometheus_client::collector::Collector for Electors {
    /// The same families as [`encode`], through the registry's encoder. It names them as it
    /// names its own: counters get their `_total` and the two families in seconds their unit
    /// from it, so the sample names are the same as [`encode`]'s.
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>,
    ) -> Result<(), std::fmt::Error> {
        self.with_elections(|elections| {
            let snaps: Vec<Snapshot<'_>> = elections.iter().map(Snapshot::of).collect();
            collect(&snaps, &mut encoder)
        })
    }
}

/// Encodes `snaps` through a `prometheus-client` registry's encoder.
#[cfg(feature = "prometheus-client")]
fn collect(
    snaps: &[Snapshot<'_>],
    encoder: &mut prometheus_client::encoding::DescriptorEncoder<'_>,
) -> Result<(), std::fmt::Error> {
    use prometheus_client::{encoding::NoLabelSet, metrics::MetricType, registry::Unit};
    if snaps.is_empty() {
        return Ok(());
    }
    let seconds = Unit::Seconds;
    {
        let mut m = encoder.encode_descriptor(
            "leader_election_master_status",
            MASTER_STATUS_HELP,
            None,
            MetricType::Gauge,
        )?;
        for s in snaps {
            m.encode_family(&[("name", s.name)])?
                .encode_gauge(&i64::from(s.leading))?;
        }
    }
    {
        let mut m = encoder.encode_descriptor(
            "leasehold_lease_transitions",
            TRANSITIONS_HELP,
            None,
            MetricType::Gauge,
        )?;
        for s in snaps {
            m.encode_family(&[("name", s.name)])?
                .encode_gauge(&i64::from(s.transitions))?;
        }
    }
    {
        let mut m =
            encoder.encode_descriptor("leasehold_terms", TERMS_HELP, None, MetricType::Counter)?;
        for s in snaps {
            m.encode_family(&[("name", s.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&s.terms, None)?;
        }
    }
    {
        let mut m = encoder.encode_descriptor(
            "leasehold_work_overruns",
            OVERRUNS_HELP,
            None,
            MetricType::Counter,
        )?;
        for s in snaps {
            m.encode_family(&[("name", s.name)])?
                .encode_counter::<NoLabelSet, _, u64>(&s.work_overruns, None)?;
        }
    }
    {
        let mut m = encoder.encode_descriptor(
            "leasehold_leaderless",
            LEADERLESS_HELP,
            Some(&seconds),
            MetricType::Counter,
        )?;
        for s in snaps {
            m.encode_family(&[("name", s.name)])?
                .encode_counter::<NoLabelSet, _, f64>(&s.leaderless, None)?;
        }
    }
    {
        let mut m = encoder.encode_descriptor(
            "leasehold_renew_duration",
            RENEW_HELP,
            Some(&seconds),
            MetricType::Histogram,
        )?;
        for s in snaps {
            // Per bucket, as the encoder sums them itself; the last one is +Inf.
            let buckets: Vec<(f64, u64)> = BUCKETS
                .into_iter()
                .chain([f64::INFINITY])
                .zip(s.renewals)
                .collect();
            m.encode_family(&[("name", s.name)])?
                .encode_histogram::<NoLabelSet>(s.renew_sum, s.renew_count(), &buckets, None)?;
        }
    }
    {
        let mut m = encoder.encode_descriptor(
            "leasehold_api_errors",
            ERRORS_HELP,
            None,
            MetricType::Counter,
        )?;
        for s in snaps {
            for (kind, n) in ERROR_KINDS.iter().zip(s.errors) {
                m.encode_family(&[("name", s.name), ("kind", kind)])?
                    .encode_counter::<NoLabelSet, _, u64>(&n, None)?;
            }
        }
    }
    Ok(())
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
        let status = leader();
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
    fn leader() -> leasehold_core::Status {
        let mut s = leasehold_core::Status::default();
        s.role = leasehold_core::Role::Leader;
        s
    }

    /// The lines of `family`'s samples, as (labels, value).
    fn samples<'a>(out: &'a str, family: &str) -> Vec<(&'a str, &'a str)> {
        out.lines()
            .filter_map(|l| l.strip_prefix(family)?.strip_prefix('{'))
            .filter_map(|l| l.rsplit_once("} "))
            .collect()
    }

    #[test]
    fn two_electors_share_each_family_and_label_values_are_escaped() {
        let (a, b) = (Metrics::default(), Metrics::default());
        a.renewed(Duration::from_millis(3));
        b.timed_out();
        let (sa, sb) = (leader(), leasehold_core::Status::default());
        let hostile = "we\"ird\\na\nme";
        let mut out = String::new();
        encode(
            &[
                Election::new("app", &a, &sa),
                Election::new(hostile, &b, &sb),
            ],
            &mut out,
        );
        let types: Vec<&str> = out.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        for t in &types {
            assert_eq!(
                types.iter().filter(|u| u == &t).count(),
                1,
                "`{t}` repeated:\n{out}"
            );
        }
        assert_eq!(types.len(), 7, "{out}");
        // Backslash, double quote and newline escaped as the text format says.
        let escaped = r#"name="we\"ird\\na\nme""#;
        assert!(
            out.contains(&format!("leader_election_master_status{{{escaped}}} 0\n")),
            "{out}"
        );
        assert!(
            out.contains("leader_election_master_status{name=\"app\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains(&format!(
                "leasehold_api_errors_total{{{escaped},kind=\"timeout\"}} 1\n"
            )),
            "{out}"
        );
        // Every line is a comment or `name{labels} value`, and no label value spans lines.
        for line in out.lines().filter(|l| !l.starts_with('#')) {
            let (series, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(series.ends_with('}'), "{line}");
        }
    }

    #[test]
    fn histogram_buckets_never_exceed_inf_or_count_under_concurrent_updates() {
        let m = std::sync::Arc::new(Metrics::default());
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let (m, stop) = (m.clone(), stop.clone());
            std::thread::spawn(move || {
                let ds = [1, 4, 30, 700, 20_000].map(Duration::from_millis);
                let mut i = 0;
                while !stop.load(Relaxed) {
                    m.renewed(ds[i % ds.len()]);
                    i += 1;
                }
            })
        };
        let status = leader();
        let deadline = std::time::Duration::from_secs(1);
        let started = std::time::SystemTime::now();
        let mut bad = None;
        let mut scrapes = 0;
        while started.elapsed().unwrap_or_default() < deadline && bad.is_none() {
            let mut out = String::new();
            m.encode("x", &status, &mut out);
            scrapes += 1;
            let buckets: Vec<u64> = samples(&out, "leasehold_renew_duration_seconds_bucket")
                .iter()
                .map(|(_, v)| v.parse().unwrap())
                .collect();
            let count: u64 = samples(&out, "leasehold_renew_duration_seconds_count")[0]
                .1
                .parse()
                .unwrap();
            let inf = *buckets.last().unwrap();
            if buckets.windows(2).any(|w| w[0] > w[1]) || inf != count {
                bad = Some(format!("buckets {buckets:?}, _count {count}"));
            }
        }
        stop.store(true, Relaxed);
        writer.join().unwrap();
        assert!(
            bad.is_none(),
            "scrape {scrapes} read an inconsistent histogram: {}",
            bad.unwrap_or_default()
        );
    }
    fn handle(m: impl Fn(&Metrics)) -> ElectorHandle {
        let lock = leasehold_testing::mem::MemLock::new();
        let e = crate::Elector::new(lock, "me", leasehold_core::Timing::default()).unwrap();
        let h = e.handle();
        m(h.metrics());
        h
    }

    #[test]
    fn electors_are_kept_by_name_and_encoded_together() {
        let electors = Electors::new();
        let shared = electors.clone();
        electors.insert("a", &handle(|m| m.renewed(Duration::from_millis(3))));
        electors.insert("b\n", &handle(|m| m.timed_out()));
        shared.insert("a", &handle(|m| m.started_term()));
        let mut out = String::new();
        electors.encode(&mut out);
        assert_eq!(out.matches("# TYPE ").count(), 7, "{out}");
        assert!(
            out.contains("leasehold_terms_total{name=\"a\"} 1\n"),
            "replaced: {out}"
        );
        assert!(
            out.contains("leasehold_renew_duration_seconds_count{name=\"a\"} 0\n"),
            "{out}"
        );
        assert!(
            out.contains("leasehold_api_errors_total{name=\"b\\n\",kind=\"timeout\"} 1\n"),
            "{out}"
        );
        assert!(
            out.contains("leader_election_master_status{name=\"a\"} 0\n"),
            "{out}"
        );
        assert!(shared.remove("a") && !shared.remove("a"));
        out.clear();
        electors.encode(&mut out);
        assert!(!out.contains("name=\"a\""), "{out}");
        assert!(!Electors::new().remove("x"));
        out.clear();
        Electors::new().encode(&mut out);
        assert_eq!(out, "", "no electors, no families");
    }

    #[cfg(feature = "prometheus-client")]
    #[test]
    fn the_collector_encodes_the_same_samples_in_the_application_s_registry() {
        use prometheus_client::{encoding, registry::Registry};
        let electors = Electors::new();
        electors.insert("a", &handle(|m| m.renewed(Duration::from_millis(30))));
        electors.insert("we\"ird\\na\nme", &handle(|m| m.timed_out()));
        let mut registry = Registry::default();
        registry.register_collector(Box::new(electors.clone()));
        let mut ours = String::new();
        electors.encode(&mut ours);
        let mut theirs = String::new();
        encoding::prometheus_text::encode(&mut theirs, &registry).unwrap();
        // The same samples, up to how each writes a number ("1" or "1.0").
        let samples = |s: &str| -> Vec<String> {
            let mut v: Vec<String> = s
                .lines()
                .filter(|l| !l.starts_with('#'))
                .map(|l| {
                    let (series, value) = l.rsplit_once(' ').unwrap();
                    let series = match series.split_once(",le=\"") {
                        Some((head, le)) => {
                            let le: f64 = le.trim_end_matches("\"}").parse().unwrap();
                            format!("{head},le=\"{le}\"}}")
                        }
                        None => series.to_owned(),
                    };
                    format!("{series} {}", value.parse::<f64>().unwrap())
                })
                .collect();
            v.sort();
            v
        };
        assert_eq!(
            samples(&ours),
            samples(&theirs),
            "ours:\n{ours}\nprometheus-client's:\n{theirs}"
        );
        // Each family described once, in the OpenMetrics encoding too.
        let mut open = String::new();
        encoding::text::encode(&mut open, &registry).unwrap();
        let types: Vec<&str> = open.lines().filter(|l| l.starts_with("# TYPE ")).collect();
        assert_eq!(types.len(), 7, "{open}");
        assert!(open.ends_with("# EOF\n"), "{open}");
    }
}
