//! `MultiLock` (a migration pair) under the scenarios where a summary of two records could hide
//! a renewal or misreport a half-written pair: both sides in memory, the elector on tokio's
//! paused clock (one test in real time, where the old code spun without yielding).

use leasehold::{Elector, LeaderRecord, Timing, backend::kubernetes::MultiLock};
use leasehold_testing::mem::MemLock;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, PartialEq)]
enum Ev {
    Started(u64),
    Stopped,
}

fn record(holder: &str, renew_secs: i64, transitions: i32) -> LeaderRecord {
    let t = jiff::Timestamp::from_second(1_900_000_000 + renew_secs).unwrap();
    LeaderRecord::new(holder, 15)
        .with_acquire_time(Some(t))
        .with_renew_time(Some(t))
        .with_leader_transitions(transitions)
}

fn spawn(
    lock: MultiLock<MemLock, MemLock>,
    id: &str,
    timing: Timing,
) -> (
    CancellationToken,
    mpsc::UnboundedReceiver<Ev>,
    tokio::task::JoinHandle<()>,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let t2 = tx.clone();
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock, id, timing)
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send(Ev::Started(l.fencing_token().0));
        })
        .on_stopped_leading(move || {
            let _ = t2.send(Ev::Stopped);
        });
    let task = tokio::spawn(elector.run(cancel.clone()));
    (cancel, rx, task)
}

fn events(rx: &mut mpsc::UnboundedReceiver<Ev>) -> Vec<Ev> {
    let mut v = Vec::new();
    while let Ok(e) = rx.try_recv() {
        v.push(e);
    }
    v
}

/// A migration ConfigMap -> Lease with stable identities: a multi-lock leader `x` crashed,
/// leaving its record on both objects; a Lease-only candidate with the same identity took the
/// Lease and renews it. A multi-lock standby that first observes the pair afterwards must see
/// those renewals, though the ConfigMap (the primary) never changes.
#[tokio::test(start_paused = true)]
async fn a_renewal_of_the_secondary_alone_under_the_same_holder_is_seen() {
    let (primary, secondary) = (MemLock::new(), MemLock::new());
    primary.put(record("x", 0, 3));
    secondary.put(record("x", 0, 3));
    // The Lease-only `x` takes the Lease over and renews it every 2 s.
    secondary.put(record("x", 20, 4));
    let (cancel, mut rx, task) = spawn(
        MultiLock::new(primary.clone(), secondary.clone()),
        "s",
        Timing::default(),
    );
    for k in 1..=30 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        secondary.put(record("x", 20 + 2 * k, 4));
    }
    let seen = events(&mut rx);
    println!("multi-lock standby over 60 s of Lease-only renewals: {seen:?}");
    assert_eq!(
        seen,
        vec![],
        "the standby took a lease that was being renewed"
    );
    cancel.cancel();
    task.await.unwrap();
}

/// A ConfigMap-only candidate renews the primary while the Lease (the secondary) still holds an
/// older record written by a clock more than a lease ahead: the summary's renew time (the later
/// of the two) never moves, but the pair does.
#[tokio::test(start_paused = true)]
async fn a_renewal_below_the_other_sides_stale_renew_time_is_seen() {
    let (primary, secondary) = (MemLock::new(), MemLock::new());
    primary.put(record("c", 0, 5));
    secondary.put(record("y", 3_600, 2));
    let (cancel, mut rx, task) = spawn(
        MultiLock::new(primary.clone(), secondary.clone()),
        "s",
        Timing::default(),
    );
    for k in 1..=30 {
        tokio::time::sleep(Duration::from_secs(2)).await;
        primary.put(record("c", 2 * k, 5));
    }
    let seen = events(&mut rx);
    println!("multi-lock standby over 60 s of ConfigMap-only renewals: {seen:?}");
    assert_eq!(
        seen,
        vec![],
        "the standby took a lease that was being renewed"
    );
    cancel.cancel();
    task.await.unwrap();
}

/// The primary takes a renewal, then the secondary answers 409 because something else touched
/// it (a label, an annotation) since it was read. Half the pair is the leader's write: it must
/// know it as its own when it reads it back, not step down as if a twin wrote it. Real time:
/// records are told apart by their wall-clock seconds, which a paused clock does not move.
#[tokio::test]
async fn a_renewal_refused_by_the_secondary_alone_does_not_end_the_term() {
    let (primary, secondary) = (MemLock::new(), MemLock::new());
    // Renewals every second.
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    };
    let (cancel, mut rx, task) = spawn(
        MultiLock::new(primary.clone(), secondary.clone()),
        "m",
        timing,
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(events(&mut rx), vec![Ev::Started(0)]);
    // Something rewrites the Lease's object (same record, new version) every 400 ms.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(400)).await;
        let cur = secondary.current().unwrap().record;
        secondary.put(cur);
    }
    let seen = events(&mut rx);
    let updates = primary
        .requests()
        .iter()
        .filter(|r| r.0 == "update")
        .count();
    println!(
        "8 s with the secondary touched every 400 ms: {updates} primary updates, events {seen:?}"
    );
    assert_eq!(
        seen,
        vec![],
        "the leader stepped down over its own half-written pair"
    );
    assert_eq!(primary.current().unwrap().record.holder_identity, "m");
    cancel.cancel();
    task.await.unwrap();
}

/// One side of the pair cannot be decoded. The standby replaces the pair after a lease
/// unchanged, writing both sides, and meanwhile reads at a bounded rate: the side's own
/// version was once reported for the pair, so every replacement was a conflict and the
/// standby read and wrote in a loop at round-trip rate. Real time: that loop never yielded to
/// a paused clock.
#[tokio::test]
async fn a_corrupt_side_is_replaced_after_a_lease_without_a_request_storm() {
    let (primary, secondary) = (MemLock::new(), MemLock::new());
    primary.put_corrupt();
    let mut gone = record("gone", 0, 6);
    gone.lease_duration_seconds = 2;
    secondary.put(gone);
    let timing = Timing {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(250),
        release_on_cancel: true,
    };
    let (cancel, mut rx, task) = spawn(
        MultiLock::new(primary.clone(), secondary.clone()),
        "s",
        timing,
    );
    let started = tokio::time::timeout(Duration::from_secs(6), rx.recv()).await;
    let gets = primary.requests().iter().filter(|r| r.0 == "get").count();
    println!("corrupt primary: started {started:?}, {gets} reads of the primary");
    assert_eq!(
        started,
        Ok(Some(Ev::Started(7))),
        "replaced after a lease, token after 6"
    );
    assert!(gets < 100, "{gets} reads in about 2 s");
    assert_eq!(primary.current().unwrap().record.holder_identity, "s");
    assert_eq!(secondary.current().unwrap().record.holder_identity, "s");
    cancel.cancel();
    task.await.unwrap();
}
