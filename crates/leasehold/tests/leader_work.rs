//! `Elector::run_while_leading` on paused time, against the in-memory backend: the work starts
//! with each term, is cancelled and awaited when the term ends, and only then is the lock
//! released or taken again (drain, then release).

use leasehold::{Elector, LeaderRecord, Timing};
use leasehold_testing::mem::MemLock;
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

/// What the work did, and when.
#[derive(Clone, Debug, PartialEq)]
enum Did {
    Started(u64),
    Returned(u64),
}

type Log = Arc<Mutex<Vec<(Did, Instant)>>>;

fn note(log: &Log, did: Did) {
    log.lock().unwrap().push((did, Instant::now()));
}

fn when(log: &Log, did: &Did) -> Option<Instant> {
    log.lock()
        .unwrap()
        .iter()
        .find(|(d, _)| d == did)
        .map(|(_, at)| *at)
}

/// When the lock received each update (renewals and releases).
fn updates(lock: &MemLock) -> Vec<Instant> {
    lock.requests()
        .into_iter()
        .filter(|r| r.0 == "update")
        .map(|r| r.1)
        .collect()
}

/// A candidate whose work takes `stop_after` to return once told to stop (`None`: never).
fn candidate(
    lock: MemLock,
    id: &str,
    stop_after: Option<Duration>,
    log: Log,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<()>,
    leasehold::ElectorHandle,
) {
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock, id, Timing::default()).unwrap();
    let handle = elector.handle();
    let task = tokio::spawn(elector.run_while_leading(cancel.clone(), move |term| {
        let log = log.clone();
        async move {
            let token = term.fencing_token().0;
            note(&log, Did::Started(token));
            term.lost().await;
            match stop_after {
                Some(d) => sleep(d).await,
                None => std::future::pending().await,
            }
            note(&log, Did::Returned(token));
        }
    }));
    (cancel, task, handle)
}

#[tokio::test(start_paused = true)]
async fn a_shutdown_releases_only_after_the_work_has_returned() {
    let lock = MemLock::new();
    let log = Log::default();
    let (cancel, task, handle) = candidate(
        lock.clone(),
        "a",
        Some(Duration::from_millis(700)),
        log.clone(),
    );
    handle.acquired().await.unwrap();
    sleep(Duration::from_millis(10)).await;
    assert!(
        when(&log, &Did::Started(0)).is_some(),
        "the work started with the term"
    );
    let updates_before = updates(&lock).len();
    let cancelled_at = Instant::now();
    cancel.cancel();
    task.await.unwrap();
    let returned = when(&log, &Did::Returned(0)).expect("the work returned");
    assert_eq!(returned - cancelled_at, Duration::from_millis(700));
    let updates = updates(&lock);
    assert_eq!(
        updates.len(),
        updates_before + 1,
        "one release, no renewal meanwhile"
    );
    assert!(
        *updates.last().unwrap() >= returned,
        "released at {:?}, after the work returned at {:?}",
        *updates.last().unwrap() - cancelled_at,
        returned - cancelled_at
    );
    assert!(lock.current().unwrap().record.is_released());
    assert_eq!(handle.metrics().work_overruns(), 0);
}

#[tokio::test(start_paused = true)]
async fn a_work_that_never_returns_is_counted_and_the_lock_is_left_to_expire() {
    let lock = MemLock::new();
    let log = Log::default();
    let (cancel, task, handle) = candidate(lock.clone(), "a", None, log.clone());
    handle.acquired().await.unwrap();
    let renewed = lock.current().unwrap().version;
    cancel.cancel();
    // Renewals stop at the cancel; the term ends at its renew deadline (10 s), when the work
    // is late.
    sleep(Duration::from_secs(11)).await;
    assert_eq!(handle.metrics().work_overruns(), 1);
    assert_eq!(
        lock.current().unwrap().version,
        renewed,
        "nothing written under a work that still runs"
    );
    // The run ends (the work aborted a lease duration after the machine gave up), and the
    // record was never released: it expired for the others as if the process had died.
    tokio::time::timeout(Duration::from_secs(60), task)
        .await
        .expect("the run ends")
        .unwrap();
    assert_eq!(lock.current().unwrap().version, renewed);
    assert_eq!(
        when(&log, &Did::Returned(0)),
        None,
        "aborted, never returned"
    );
}

#[tokio::test(start_paused = true)]
async fn no_new_term_starts_before_the_last_terms_work_has_returned() {
    let lock = MemLock::new();
    let log = Log::default();
    let (cancel, task, handle) =
        candidate(lock.clone(), "a", Some(Duration::from_secs(2)), log.clone());
    handle.acquired().await.unwrap();
    sleep(Duration::from_millis(100)).await;
    // Someone else takes the lock, then releases it at once.
    let mut other = LeaderRecord::new("b", 15).with_leader_transitions(1);
    other.renew_time = Some(jiff::Timestamp::now());
    lock.put(other);
    let lost_at = Instant::now();
    sleep(Duration::from_millis(50)).await;
    lock.put(LeaderRecord::new("", 1).with_leader_transitions(1));
    // The lock is free at once, but this candidate's old work still runs for 2 s.
    let next = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(at) = when(&log, &Did::Started(2)) {
                return at;
            }
            sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a new term");
    let returned = when(&log, &Did::Returned(0)).unwrap();
    assert!(
        next >= returned,
        "the new term started {:?} after the loss, the old work returned {:?} after it",
        next - lost_at,
        returned - lost_at
    );
    assert!(
        next - returned < Duration::from_millis(100),
        "and at once after it"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_work_that_returns_while_leading_ends_the_run_and_releases() {
    let lock = MemLock::new();
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock.clone(), "a", Timing::default()).unwrap();
    let task = tokio::spawn(elector.run_while_leading(cancel.clone(), |_term| async {
        sleep(Duration::from_secs(3)).await;
    }));
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the run ends without a cancel")
        .unwrap();
    assert!(lock.current().unwrap().record.is_released());
    assert!(!cancel.is_cancelled(), "the caller's token is the caller's");
}

#[tokio::test(start_paused = true)]
async fn a_step_down_drains_releases_and_a_watching_standby_takes_over_at_once() {
    let lock = MemLock::new();
    let log = Log::default();
    let (cancel_a, task_a, a) = candidate(
        lock.clone(),
        "a",
        Some(Duration::from_millis(300)),
        log.clone(),
    );
    a.acquired().await.unwrap();
    let (cancel_b, task_b, b) = candidate(lock.clone(), "b", Some(Duration::ZERO), log.clone());
    sleep(Duration::from_secs(1)).await;
    assert_eq!(b.leader(), "a", "b stands by, watching");

    let asked = Instant::now();
    assert!(a.step_down(Duration::from_secs(30)), "a was leading");
    let term = b.acquired().await.unwrap();
    let took_over = Instant::now();
    let returned = when(&log, &Did::Returned(0)).expect("a's work returned");
    assert_eq!(
        returned - asked,
        Duration::from_millis(300),
        "a drained first"
    );
    assert!(took_over >= returned, "no overlap with a's work");
    assert!(
        took_over - asked < Duration::from_millis(400),
        "b took over {:?} after the request, not a lease duration later",
        took_over - asked
    );
    assert_eq!(term.fencing_token().0, 1, "a new term, a larger token");
    assert!(a.leadership().is_none());

    // a sits out its hold-off: b's crash leaves the lock to expire, and a does not take it
    // before the 30 s are over.
    cancel_b.cancel();
    task_b.await.unwrap();
    sleep(Duration::from_secs(20)).await;
    assert!(a.leadership().is_none(), "still sitting out");
    let term = tokio::time::timeout(Duration::from_secs(20), a.acquired())
        .await
        .expect("a contends again after its hold-off")
        .unwrap();
    assert!(asked.elapsed() >= Duration::from_secs(30));
    assert_eq!(term.fencing_token().0, 2);
    // Asked while standing by: false, and nothing else happens.
    assert!(!b.step_down(Duration::ZERO));
    cancel_a.cancel();
    task_a.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_transfer_hands_the_term_to_the_named_candidate_and_no_one_else() {
    let lock = MemLock::new();
    let log = Log::default();
    let (cancel_a, task_a, a) = candidate(
        lock.clone(),
        "a",
        Some(Duration::from_millis(300)),
        log.clone(),
    );
    a.acquired().await.unwrap();
    let (cancel_b, task_b, b) = candidate(lock.clone(), "b", Some(Duration::ZERO), log.clone());
    let (cancel_c, task_c, c) = candidate(lock.clone(), "c", Some(Duration::ZERO), log.clone());
    sleep(Duration::from_secs(1)).await;
    assert_eq!(b.transfer("c"), Err(leasehold::TransferError::NotLeading));
    assert_eq!(
        a.transfer("a"),
        Err(leasehold::TransferError::BadTarget("a".into()))
    );

    let asked = Instant::now();
    a.transfer("c").unwrap();
    let term = c.acquired().await.unwrap();
    let took = asked.elapsed();
    let returned = when(&log, &Did::Returned(0)).expect("a's work returned");
    assert_eq!(
        returned - asked,
        Duration::from_millis(300),
        "a drained first"
    );
    assert!(
        took < Duration::from_millis(400),
        "c took over {took:?} after the request"
    );
    assert_eq!(term.fencing_token().0, 1, "the next token");
    // Nobody else took it, then or after: b stands by, a sits out.
    sleep(Duration::from_secs(20)).await;
    assert!(b.leadership().is_none() && a.leadership().is_none());
    assert!(c.leadership().is_some(), "c keeps renewing its term");
    assert_eq!(when(&log, &Did::Started(2)), None, "no third term");
    for (cancel, task) in [(cancel_a, task_a), (cancel_b, task_b), (cancel_c, task_c)] {
        cancel.cancel();
        task.await.unwrap();
    }
}

#[tokio::test(start_paused = true)]
async fn a_transfer_to_a_candidate_that_never_comes_expires_into_an_ordinary_election() {
    let lock = MemLock::new();
    let log = Log::default();
    let (cancel_a, task_a, a) = candidate(lock.clone(), "a", Some(Duration::ZERO), log.clone());
    a.acquired().await.unwrap();
    let (cancel_b, task_b, b) = candidate(lock.clone(), "b", Some(Duration::ZERO), log.clone());
    sleep(Duration::from_secs(1)).await;
    let asked = Instant::now();
    let old = a.leadership().unwrap();
    a.transfer("ghost").unwrap();
    old.lost().await;
    // The record names the ghost for a lease (15 s) from when it was seen, then an ordinary
    // election follows, which either candidate may win (a's own hold-off is a lease too).
    let term = tokio::select! {
        t = a.acquired() => t.unwrap(),
        t = b.acquired() => t.unwrap(),
    };
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_secs(15) && took < Duration::from_secs(16),
        "{took:?}"
    );
    assert_eq!(term.fencing_token().0, 2, "after the ghost's token 1");
    for (cancel, task) in [(cancel_a, task_a), (cancel_b, task_b)] {
        cancel.cancel();
        task.await.unwrap();
    }
}
