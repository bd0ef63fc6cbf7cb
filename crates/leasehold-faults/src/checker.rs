//! The history checker: overlaps, stale writes accepted, token order, leaderless time per fault.

use crate::store::Entry;
use std::{collections::BTreeMap, fmt::Write as _, time::Duration};

/// A fault the nemesis injected.
#[derive(Clone, Debug)]
pub struct FaultRecord {
    /// Its kind (a row of the table).
    pub kind: &'static str,
    /// The candidate it targeted, if one.
    pub target: Option<String>,
    /// When it began and ended (healed).
    pub start: Duration,
    /// When it was healed.
    pub end: Duration,
}

/// One term as the store saw it: the first and last write (accepted or not) with this token.
#[derive(Clone, Debug)]
pub struct Term {
    /// Who.
    pub who: String,
    /// The token.
    pub token: u64,
    /// First write.
    pub start: Duration,
    /// Last write.
    pub end: Duration,
}

/// What the checker found.
pub struct Report {
    /// The table, ready to print.
    pub table: String,
    /// Overlaps no whole-tree freeze explains.
    pub unexplained_overlaps: usize,
    /// Writes accepted with a token below one accepted earlier.
    pub stale_accepted: usize,
    /// Terms whose token did not increase.
    pub token_regressions: usize,
}

/// The bound leasehold promises for the leaderless time after each fault, and its text.
fn bound(kind: &str, lease: Duration) -> (Duration, String) {
    let l = lease.as_secs_f64();
    match kind {
        // The next leader's first write follows the release within milliseconds.
        "SIGTERM leader" => (Duration::from_secs(1), "release: < 1 s".into()),
        // Others wait one lease from the last renewal they saw, which is at or after the last
        // write the old leader could make: the gap is at most a lease, plus scheduling.
        "restart kube-apiserver" | "restart etcd" => (
            lease * 3 + Duration::from_secs(5),
            format!("outage + lease: ≤ {:.0} s", 3.0 * l + 5.0),
        ),
        _ => (
            lease + Duration::from_millis(500),
            format!("lease + 0.5 s = {:.1} s", l + 0.5),
        ),
    }
}

/// Checks the store's log against the faults.
pub fn check(log: &[Entry], faults: &[FaultRecord], lease: Duration, run: Duration) -> Report {
    // Terms by (who, token).
    let mut terms: BTreeMap<(u64, String), Term> = BTreeMap::new();
    for e in log {
        let t = terms.entry((e.token, e.who.clone())).or_insert(Term {
            who: e.who.clone(),
            token: e.token,
            start: e.at,
            end: e.at,
        });
        t.end = t.end.max(e.at);
        t.start = t.start.min(e.at);
    }
    let mut terms: Vec<Term> = terms.into_values().collect();
    terms.sort_by_key(|t| t.start);

    // Overlaps.
    let mut overlaps = Vec::new();
    for (i, a) in terms.iter().enumerate() {
        for b in &terms[i + 1..] {
            if b.start < a.end && b.token != a.token {
                overlaps.push((a.clone(), b.clone()));
            }
        }
    }
    let explained = |a: &Term, b: &Term| {
        let older = if a.token < b.token { a } else { b };
        faults.iter().any(|f| {
            f.kind == "freeze leader tree"
                && f.target.as_deref() == Some(older.who.as_str())
                && f.start <= b.start.max(a.start)
                && f.end + Duration::from_secs(2) >= a.end.min(b.end)
        })
    };
    let unexplained: Vec<_> = overlaps.iter().filter(|(a, b)| !explained(a, b)).collect();

    // Stale writes accepted.
    let mut max = None::<u64>;
    let mut stale_accepted = 0;
    let mut rejected = 0;
    for e in log {
        if e.accepted {
            if max.is_some_and(|m| e.token < m) {
                stale_accepted += 1;
            }
            max = Some(max.map_or(e.token, |m| m.max(e.token)));
        } else {
            rejected += 1;
        }
    }

    // Token order: terms by start must have increasing tokens.
    let mut token_regressions = 0;
    let mut last = None::<u64>;
    for t in &terms {
        if last.is_some_and(|l| t.token <= l) {
            token_regressions += 1;
        }
        last = Some(t.token);
    }

    // Leaderless gaps between accepted writes, attributed to the fault that began last before
    // the gap.
    let accepted: Vec<Duration> = log.iter().filter(|e| e.accepted).map(|e| e.at).collect();
    let mut gaps: BTreeMap<&str, Vec<Duration>> = BTreeMap::new();
    for w in accepted.windows(2) {
        let gap = w[1] - w[0];
        if gap > Duration::from_millis(200) {
            let kind = faults
                .iter()
                .filter(|f| f.start <= w[0] + Duration::from_millis(50) && w[0] < f.end + lease * 2)
                .max_by_key(|f| f.start)
                .map_or("(none: no fault active)", |f| f.kind);
            gaps.entry(kind).or_default().push(gap);
        }
    }

    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for f in faults {
        *counts.entry(f.kind).or_default() += 1;
    }
    let mut table = String::new();
    let _ = writeln!(
        table,
        "run: {:.0} s, {} writes ({} rejected by fencing), {} terms",
        run.as_secs_f64(),
        log.len(),
        rejected,
        terms.len()
    );
    let _ = writeln!(
        table,
        "| fault | injected | leaderless max | leaderless median | bound | |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|---|");
    let mut kinds: Vec<&str> = counts.keys().copied().collect();
    for k in gaps.keys() {
        if !kinds.contains(k) {
            kinds.push(k);
        }
    }
    for kind in kinds {
        let mut g = gaps.get(kind).cloned().unwrap_or_default();
        g.sort();
        let (b, text) = bound(kind, lease);
        let (max, median, ok) = if g.is_empty() {
            ("-".to_owned(), "-".to_owned(), true)
        } else {
            let max = *g.last().expect("non-empty");
            (
                format!("{:.3} s", max.as_secs_f64()),
                format!("{:.3} s", g[g.len() / 2].as_secs_f64()),
                max <= b,
            )
        };
        let _ = writeln!(
            table,
            "| {kind} | {} | {max} | {median} | {text} | {} |",
            counts.get(kind).copied().unwrap_or(0),
            if ok { "ok" } else { "OVER" }
        );
    }
    let _ = writeln!(table);
    let _ = writeln!(
        table,
        "overlapping terms: {} ({} explained by a whole-tree freeze, {} unexplained)",
        overlaps.len(),
        overlaps.len() - unexplained.len(),
        unexplained.len()
    );
    for (a, b) in &overlaps {
        let why = if explained(a, b) {
            "whole tree of the older leader frozen (SIGSTOP), as allowed"
        } else {
            "UNEXPLAINED"
        };
        let _ = writeln!(
            table,
            "  {} (token {}) {:.3}-{:.3} s and {} (token {}) {:.3}-{:.3} s: {why}",
            a.who,
            a.token,
            a.start.as_secs_f64(),
            a.end.as_secs_f64(),
            b.who,
            b.token,
            b.start.as_secs_f64(),
            b.end.as_secs_f64()
        );
    }
    let _ = writeln!(
        table,
        "stale writes accepted by the fenced store: {stale_accepted}"
    );
    let _ = writeln!(
        table,
        "fencing tokens strictly increasing across terms: {}",
        if token_regressions == 0 { "yes" } else { "NO" }
    );
    Report {
        table,
        unexplained_overlaps: unexplained.len(),
        stale_accepted,
        token_regressions,
    }
}
