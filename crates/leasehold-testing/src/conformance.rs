//! The lock-backend conformance suite: each check of [`leasehold_core::LockBackend`]'s contract.
//!
//! A backend's tests call [`run_all`] with a builder that returns a fresh, empty lock object for
//! each name (a new file, a new Lease name), the way openraft's storage `Suite` does.

use futures_util::StreamExt as _;
use leasehold_core::{LeaderRecord, LockBackend, LockError, Version};
use std::time::Duration;

fn record(holder: &str, transitions: i32) -> LeaderRecord {
    let now = jiff::Timestamp::now();
    LeaderRecord::new(holder, 15)
        .with_acquire_time(Some(now))
        .with_renew_time(Some(now))
        .with_leader_transitions(transitions)
}

/// Runs every check, each on its own lock from `make(name)`.
///
/// # Panics
/// On the first broken rule, naming it.
pub async fn run_all<B: LockBackend>(make: impl Fn(&str) -> B) {
    get_of_absent_is_none(make("absent")).await;
    create_then_get_round_trips(make("create")).await;
    create_of_existing_conflicts(make("create-twice")).await;
    update_with_current_version_succeeds(make("update")).await;
    stale_update_conflicts_and_changes_nothing(make("stale")).await;
    update_of_absent_conflicts(make("update-absent")).await;
    racing_updates_have_one_winner(make("race")).await;
    watch_reports_changes_in_order(make("watch")).await;
}

/// `get` of a lock that was never created is `Ok(None)`.
pub async fn get_of_absent_is_none<B: LockBackend>(lock: B) {
    assert_eq!(
        lock.get().await.expect("get"),
        None,
        "get of an absent lock"
    );
}

/// What `create` wrote, `get` returns, at the version `create` returned.
pub async fn create_then_get_round_trips<B: LockBackend>(lock: B) {
    let r = record("a", 0);
    let v = lock.create(&r).await.expect("create");
    let got = lock
        .get()
        .await
        .expect("get")
        .expect("present after create");
    assert_eq!(got.version, v, "get returns the version create returned");
    assert_same(&got.record, &r);
}

/// `create` of an existing object fails with `Conflict` and leaves it alone.
pub async fn create_of_existing_conflicts<B: LockBackend>(lock: B) {
    let a = record("a", 0);
    lock.create(&a).await.expect("create");
    let err = lock
        .create(&record("b", 0))
        .await
        .expect_err("second create must fail");
    assert!(
        matches!(err, LockError::Conflict { .. }),
        "expected Conflict, got {err:?}"
    );
    assert_same(&lock.get().await.unwrap().unwrap().record, &a);
}

/// `update` at the current version succeeds and returns a new version.
pub async fn update_with_current_version_succeeds<B: LockBackend>(lock: B) {
    let v1 = lock.create(&record("a", 0)).await.expect("create");
    let b = record("b", 1);
    let v2 = lock
        .update(&b, &v1)
        .await
        .expect("update at current version");
    assert_ne!(v1, v2, "a write yields a new version");
    let got = lock.get().await.unwrap().unwrap();
    assert_eq!(got.version, v2);
    assert_same(&got.record, &b);
}

/// `update` at a stale version fails with `Conflict` and never overwrites.
pub async fn stale_update_conflicts_and_changes_nothing<B: LockBackend>(lock: B) {
    let v1 = lock.create(&record("a", 0)).await.expect("create");
    let b = record("b", 1);
    let v2 = lock.update(&b, &v1).await.expect("update");
    let err = lock
        .update(&record("c", 1), &v1)
        .await
        .expect_err("stale update must fail");
    assert!(
        matches!(err, LockError::Conflict { .. }),
        "expected Conflict, got {err:?}"
    );
    let got = lock.get().await.unwrap().unwrap();
    assert_eq!(got.version, v2, "stale update changed the version");
    assert_same(&got.record, &b);
}

/// `update` of an object that does not exist is a `Conflict`.
pub async fn update_of_absent_conflicts<B: LockBackend>(lock: B) {
    let err = lock
        .update(&record("a", 0), &Version::new("1"))
        .await
        .expect_err("must fail");
    assert!(
        matches!(err, LockError::Conflict { .. }),
        "expected Conflict, got {err:?}"
    );
    assert_eq!(lock.get().await.unwrap(), None, "update must not create");
}

/// Concurrent updates from one version: exactly one wins.
pub async fn racing_updates_have_one_winner<B: LockBackend>(lock: B) {
    let v1 = lock.create(&record("a", 0)).await.expect("create");
    let attempts = (0..5).map(|i| {
        let r = record(&format!("racer-{i}"), 1);
        let lock = &lock;
        let v1 = v1.clone();
        async move { (r.clone(), lock.update(&r, &v1).await) }
    });
    let results = futures_util::future::join_all(attempts).await;
    let winners: Vec<_> = results.iter().filter(|(_, r)| r.is_ok()).collect();
    assert_eq!(
        winners.len(),
        1,
        "exactly one CAS from the same version wins: {results:?}"
    );
    for (_, r) in &results {
        if let Err(e) = r {
            assert!(
                matches!(e, LockError::Conflict { .. }),
                "losers get Conflict, got {e:?}"
            );
        }
    }
    assert_same(&lock.get().await.unwrap().unwrap().record, &winners[0].0);
}

/// A watch from a version yields later states, newest last, in order.
pub async fn watch_reports_changes_in_order<B: LockBackend>(lock: B) {
    let v1 = lock.create(&record("a", 0)).await.expect("create");
    let mut watch = lock.watch(Some(&v1));
    let mut v = v1;
    for i in 1..=3 {
        v = lock
            .update(&record(&format!("h{i}"), i), &v)
            .await
            .expect("update");
    }
    let mut last_transitions = 0;
    loop {
        let item = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .expect("watch delivered the changes within 10 s")
            .expect("watch ended early")
            .expect("watch error");
        let got = item.expect("object present");
        assert!(
            got.record.leader_transitions >= last_transitions,
            "watch went backwards"
        );
        last_transitions = got.record.leader_transitions;
        if got.version == v {
            assert_eq!(got.record.holder_identity, "h3");
            break;
        }
    }
}

fn assert_same(got: &LeaderRecord, want: &LeaderRecord) {
    // Backends may store times at microsecond precision.
    // Backends store times at microseconds (Lease MicroTime, file) or whole seconds
    // (annotations, as client-go's `metav1.Time`).
    let same_time = |got: Option<jiff::Timestamp>, want: Option<jiff::Timestamp>| match (got, want)
    {
        (Some(g), Some(w)) => {
            g.as_microsecond() == w.as_microsecond()
                || (g.subsec_nanosecond() == 0 && g.as_second() == w.as_second())
        }
        (g, w) => g == w,
    };
    assert_eq!(got.holder_identity, want.holder_identity);
    assert_eq!(got.lease_duration_seconds, want.lease_duration_seconds);
    assert_eq!(got.leader_transitions, want.leader_transitions);
    assert!(
        same_time(got.acquire_time, want.acquire_time),
        "acquireTime {got:?} vs {want:?}"
    );
    assert!(
        same_time(got.renew_time, want.renew_time),
        "renewTime {got:?} vs {want:?}"
    );
}
