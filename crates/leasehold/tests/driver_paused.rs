//! The tokio driver on paused time, against the in-memory backend: exact timing of renewal,
//! step-down under a hung store, takeover from observation, and no polling while a watch works.

use leasehold::{Elector, LeaderRecord, Timing};
use leasehold_testing::mem::MemLock;
use std::time::Duration;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug, PartialEq)]
enum Ev {
    Started(u64),
    Stopped,
}

fn spawn(
    lock: MemLock,
    id: &str,
) -> (
    CancellationToken,
    mpsc::UnboundedReceiver<(Ev, Instant)>,
    tokio::task::JoinHandle<()>,
    leasehold::ElectorHandle,
) {
    spawn_with(lock, id, Timing::default())
}

fn spawn_with(
    lock: MemLock,
    id: &str,
    timing: Timing,
) -> (
    CancellationToken,
    mpsc::UnboundedReceiver<(Ev, Instant)>,
    tokio::task::JoinHandle<()>,
    leasehold::ElectorHandle,
) {
    let (tx, rx) = mpsc::unbounded_channel();
    let t2 = tx.clone();
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock, id, timing)
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send((Ev::Started(l.fencing_token().0), Instant::now()));
        })
        .on_stopped_leading(move || {
            let _ = t2.send((Ev::Stopped, Instant::now()));
        });
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(cancel.clone()));
    (cancel, rx, task, handle)
}

#[tokio::test(start_paused = true)]
async fn renews_every_half_renew_deadline_and_steps_down_exactly_at_the_renew_deadline_when_the_store_hangs()
 {
    let lock = MemLock::new();
    let (cancel, mut rx, task, handle) = spawn(lock.clone(), "me");
    let (ev, _) = rx.recv().await.unwrap();
    assert_eq!(ev, Ev::Started(0));
    tokio::time::sleep(Duration::from_secs(20)).await;
    let updates: Vec<_> = lock
        .requests()
        .into_iter()
        .filter(|r| r.0 == "update")
        .map(|r| r.1)
        .collect();
    // 20 s at one renewal per 5–6 s (half the 10 s renew deadline; client-go: every 2 s).
    assert!(
        (3..=4).contains(&updates.len()),
        "{} renewals in 20 s",
        updates.len()
    );
    for w in updates.windows(2) {
        let gap = w[1] - w[0];
        assert!(
            // Jitter ×[1, 1.2), plus tokio's 1 ms timer granularity. The renewal grid may
            // delay a renewal, but never past the jitter window (`Machine::timer_slack`).
            gap >= Duration::from_secs(5) && gap <= Duration::from_millis(6001),
            "renewal gap {gap:?}"
        );
    }
    assert!(handle.is_leader());

    // The store hangs: requests never answer. The leader steps down exactly a renew deadline
    // after sending its last successful renewal.
    lock.set_hang(true);
    let last_ok = lock.requests().iter().rfind(|r| r.0 == "update").unwrap().1;
    let (ev, at) = rx.recv().await.unwrap();
    assert_eq!(ev, Ev::Stopped);
    assert_eq!(
        at - last_ok,
        Duration::from_secs(10),
        "step-down at last successful send + renew deadline"
    );
    assert!(!handle.is_leader());
    lock.set_hang(false);
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn takes_over_a_silent_holder_exactly_a_lease_duration_after_observing_it() {
    let lock = MemLock::new();
    // Another holder whose timestamps are hours in the future: they must not matter.
    let future = jiff::Timestamp::now()
        .checked_add(jiff::SignedDuration::from_hours(3))
        .unwrap();
    lock.put(
        LeaderRecord::new("other", 15)
            .with_acquire_time(Some(future))
            .with_renew_time(Some(future))
            .with_leader_transitions(4),
    );
    let t0 = Instant::now();
    let (cancel, mut rx, task, handle) = spawn(lock.clone(), "me");
    let (ev, at) = rx.recv().await.unwrap();
    assert_eq!(ev, Ev::Started(5));
    let took = at - t0;
    assert!(
        took >= Duration::from_secs(15) && took < Duration::from_millis(15_100),
        "took {took:?}"
    );
    assert_eq!(handle.leader(), "me");
    cancel.cancel();
    task.await.unwrap();
    let rec = lock.current().unwrap().record;
    assert_eq!(
        (
            rec.holder_identity.as_str(),
            rec.lease_duration_seconds,
            rec.leader_transitions
        ),
        ("", 1, 5),
        "released"
    );
}

#[tokio::test(start_paused = true)]
async fn a_standby_learns_from_the_watch_and_does_not_poll() {
    let lock = MemLock::new();
    let (c1, mut rx1, t1, _) = spawn(lock.clone(), "a");
    assert_eq!(rx1.recv().await.unwrap().0, Ev::Started(0));
    let before = lock.requests().len();
    let (c2, mut rx2, t2, h2) = spawn(lock.clone(), "b");
    tokio::time::sleep(Duration::from_secs(120)).await;
    let gets_by_b = lock.requests()[before..]
        .iter()
        .filter(|r| r.0 == "get")
        .count();
    assert!(
        gets_by_b <= 1,
        "the standby read {gets_by_b} times in 120 s while the watch worked"
    );
    assert_eq!(h2.leader(), "a");
    // A release reaches the standby through the watch: it leads at once.
    let t0 = Instant::now();
    c1.cancel();
    t1.await.unwrap();
    let (ev, at) = rx2.recv().await.unwrap();
    assert_eq!(ev, Ev::Started(1));
    assert!(
        at - t0 < Duration::from_millis(5),
        "handover took {:?}",
        at - t0
    );
    c2.cancel();
    t2.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn a_releasing_leader_opens_no_watch() {
    // It is no longer leader once cancelled, but it is about to finish: on a real API server,
    // a watch set up beside the release is a request, and an event to send, in the middle of
    // the handover.
    let lock = MemLock::new();
    let (c1, mut rx1, t1, _) = spawn(lock.clone(), "a");
    assert_eq!(rx1.recv().await.unwrap().0, Ev::Started(0));
    let (c2, mut rx2, t2, h2) = spawn(lock.clone(), "b");
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert_eq!(h2.leader(), "a");
    let before = lock.requests().len();
    c1.cancel();
    t1.await.unwrap();
    assert_eq!(rx2.recv().await.unwrap().0, Ev::Started(1));
    let handover: Vec<_> = lock.requests()[before..].iter().map(|r| r.0).collect();
    assert_eq!(handover, ["update", "update"], "release, then acquisition");
    let watches = lock.requests().iter().filter(|r| r.0 == "watch").count();
    assert_eq!(watches, 1, "only the standby's");
    c2.cancel();
    t2.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn transient_failures_are_retried_without_losing_leadership() {
    let lock = MemLock::new();
    let (cancel, mut rx, task, handle) = spawn(lock.clone(), "me");
    assert_eq!(rx.recv().await.unwrap().0, Ev::Started(0));
    // Two failed requests: the renewal at 5–6 s and the first retry (a read) 1.5–2 s later.
    // The next try, 2 s later or early (`leader_retry_at`), is still before the 10 s step-down
    // and succeeds. (client-go renews every 2 s, at 2.5 × the writes.)
    lock.fail_next(2);
    tokio::time::sleep(Duration::from_secs(12)).await;
    assert!(handle.is_leader());
    assert!(rx.try_recv().is_err(), "no step-down");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn one_failed_renewal_does_not_end_a_term_with_long_retry_periods() {
    // Node-lease-like durations: renewals every 20–24 s, and a retry 20 s after a failure
    // would be past the 40 s step-down. The leader tries once more 10 s before it instead.
    let timing = Timing {
        lease_duration: Duration::from_secs(60),
        renew_deadline: Duration::from_secs(40),
        retry_period: Duration::from_secs(20),
        release_on_cancel: true,
    };
    let lock = MemLock::new();
    let (cancel, mut rx, task, handle) = spawn_with(lock.clone(), "me", timing);
    let (ev, t0) = rx.recv().await.unwrap();
    assert_eq!(ev, Ev::Started(0));
    lock.fail_next(1);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert!(handle.is_leader());
    assert!(rx.try_recv().is_err(), "no step-down");
    let after: Vec<_> = lock
        .requests()
        .into_iter()
        .map(|(op, at)| (op, at.saturating_duration_since(t0).as_secs()))
        .collect();
    // The failed renewal at 20–24 s, then a read and the renewal at 30 s.
    let i = after.iter().position(|r| r.1 >= 20).unwrap();
    assert_eq!(after[i].0, "update", "{after:?}");
    assert_eq!(
        (&after[i + 1], &after[i + 2]),
        (&("get", 30), &("update", 30)),
        "{after:?}"
    );
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test(start_paused = true)]
async fn two_candidates_with_one_identity_never_both_lead_and_the_newcomer_reports_it() {
    let lock = MemLock::new();
    let (ca, mut rxa, ta, ha) = spawn(lock.clone(), "twin");
    assert_eq!(rxa.recv().await.unwrap().0, Ev::Started(0));
    // A second process with the same identity: it must not take the record for its own.
    let (cb, mut rxb, tb, hb) = spawn(lock.clone(), "twin");
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(ha.is_leader());
    assert!(!hb.is_leader());
    assert!(rxb.try_recv().is_err(), "the twin never started leading");
    let err = hb
        .status()
        .last_error
        .expect("the twin reports the duplicate");
    assert_eq!(err.kind, leasehold::FailureKind::DuplicateIdentity, "{err}");
    assert!(err.message.contains("under this identity `twin`"), "{err}");
    // The first one goes away without releasing: the twin takes over exactly a lease after it
    // observed the last renewal (which, on this in-memory lock, is when it was written).
    ta.abort();
    let last_renewal = lock.requests().iter().rfind(|r| r.0 == "update").unwrap().1;
    let (ev, at) = rxb.recv().await.unwrap();
    assert_eq!(ev, Ev::Started(1));
    assert_eq!(
        at - last_renewal,
        Duration::from_secs(15),
        "takeover at last observed change + lease"
    );
    ca.cancel();
    cb.cancel();
    tb.await.unwrap();
    let _ = rxa;
}

#[tokio::test(start_paused = true)]
async fn dropping_the_run_future_mid_term_ends_the_term() {
    let lock = MemLock::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let elector = Elector::new(lock, "a", Timing::default())
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send(l);
        });
    let cancel = CancellationToken::new();
    let run = elector.run(cancel.clone());
    let leadership = tokio::select! {
        () = run => panic!("run returned without a cancel"),
        l = rx.recv() => l.unwrap(),
    };
    // `select!` finished on the other branch: the run future is dropped, renewals stop.
    assert!(
        leadership.is_lost(),
        "work guarded by the term stops as soon as nobody renews it"
    );
    assert!(
        !cancel.is_cancelled(),
        "only the term's token, not the caller's"
    );
}

/// The term's deadline on the boot clock counts from the renewal's send. A fake boot clock
/// (tokio's paused clock plus a "suspended" offset) jumps 30 s while a renewal is in flight,
/// as a host suspend would; converting the monotonic deadline to the boot clock when the
/// answer arrives (as the CLI did) would have moved the deadline 30 s later.
#[tokio::test(start_paused = true)]
async fn the_boot_clock_deadline_counts_from_the_send_not_the_answer() {
    use std::sync::{
        OnceLock,
        atomic::{AtomicU64, Ordering},
    };
    static BASE: OnceLock<Instant> = OnceLock::new();
    static SUSPENDED: AtomicU64 = AtomicU64::new(0);
    fn boot() -> Option<Duration> {
        let base = *BASE.get().unwrap();
        Some(
            Duration::from_secs(1000)
                + base.elapsed()
                + Duration::from_secs(SUSPENDED.load(Ordering::SeqCst)),
        )
    }
    BASE.set(Instant::now()).unwrap();
    let lock = MemLock::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock.clone(), "me", Timing::default())
        .unwrap()
        .with_boot_clock(boot)
        .on_started_leading(move |l| {
            let _ = tx.send(l);
        });
    let task = tokio::spawn(elector.run(cancel.clone()));
    let leadership = rx.recv().await.unwrap();
    let first = leadership.deadline();
    assert_eq!(
        first.boottime.unwrap(),
        Duration::from_secs(1010),
        "acquired at boot time 1000 s, renew deadline 10 s"
    );
    // The routine renewal takes 2 s to answer; the host is suspended for 30 s meanwhile.
    lock.set_delay(Duration::from_secs(2));
    let mut until = leadership.subscribe_deadline();
    let sent = loop {
        tokio::time::sleep(Duration::from_millis(10)).await;
        if let Some((_, at)) = lock.requests().into_iter().find(|r| r.0 == "update") {
            break at;
        }
    };
    let sent_by = Duration::from_secs(1000) + (sent - *BASE.get().unwrap());
    tokio::time::sleep(Duration::from_secs(1)).await;
    SUSPENDED.store(30, Ordering::SeqCst);
    until.changed().await.unwrap();
    let renewed = *until.borrow();
    let answered = boot().unwrap();
    let converted = answered + renewed.at.saturating_duration_since(Instant::now());
    println!(
        "renewal sent by boot time {sent_by:?}, answered at {answered:?}: boot-clock deadline {:?} (converted after the answer: {converted:?})",
        renewed.boottime.unwrap()
    );
    assert!(
        renewed.boottime.unwrap() <= sent_by + Duration::from_secs(10),
        "the deadline counts from the send"
    );
    assert!(converted >= renewed.boottime.unwrap() + Duration::from_secs(30));
    cancel.cancel();
    task.await.unwrap();
}

/// The token a `Leadership` hands out is the caller's to cancel: cancelling it to stop the
/// caller's own work must not end the elector's term behind its back (the elector would go on
/// renewing a term that nobody acts on, and report it as lost to everyone else holding it).
#[tokio::test(start_paused = true)]
async fn cancelling_the_token_handed_out_stops_only_the_caller_s_work() {
    let lock = MemLock::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock.clone(), "me", Timing::default())
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send(l);
        });
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(cancel.clone()));
    let leadership = rx.recv().await.unwrap();
    let mine = leadership.token();
    mine.cancel();
    tokio::time::sleep(Duration::from_secs(20)).await;
    assert!(mine.is_cancelled());
    assert!(handle.is_leader(), "the elector still leads");
    assert!(
        !leadership.is_lost(),
        "the term is not lost because a caller cancelled its own token"
    );
    assert!(
        tokio::time::timeout(Duration::ZERO, leadership.lost())
            .await
            .is_err(),
        "lost() has not completed"
    );
    assert!(!leadership.token().is_cancelled(), "a new token is live");
    assert!(rx.try_recv().is_err(), "the same term throughout");
    // The term's end still reaches every token handed out.
    let theirs = leadership.token();
    cancel.cancel();
    task.await.unwrap();
    assert!(leadership.is_lost() && theirs.is_cancelled());
}

/// `ElectorHandle::is_leader` holds the term to its deadline: an election task that is
/// stalled (never polled again, as on a blocked runtime thread) publishes no step-down, yet
/// the handle stops saying "leader" once the term's deadline has passed.
#[tokio::test(start_paused = true)]
async fn is_leader_is_false_past_the_term_s_deadline_while_the_election_task_is_stalled() {
    let lock = MemLock::new();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock.clone(), "me", Timing::default())
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send(l);
        });
    let handle = elector.handle();
    let run = elector.run(cancel.clone());
    let mut run = std::pin::pin!(run);
    let leadership = tokio::select! {
        () = &mut run => panic!("run returned without a cancel"),
        l = rx.recv() => l.unwrap(),
    };
    // From here on `run` is not polled: the election task is stalled.
    let until = leadership.valid_until();
    assert!(handle.is_leader());
    tokio::time::sleep_until(until - Duration::from_millis(1)).await;
    assert!(handle.is_leader(), "leading until the deadline");
    tokio::time::sleep_until(until).await;
    assert_eq!(
        handle.status().role,
        leasehold::Role::Leader,
        "the stalled task published no step-down"
    );
    assert!(
        !handle.is_leader(),
        "is_leader() past the term's deadline ({:?} after it)",
        Instant::now() - until
    );
    drop(leadership);
    cancel.cancel();
}
