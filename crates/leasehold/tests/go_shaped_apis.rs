//! The Go-shaped library APIs (`leasehold::compat`) against the real kube-apiserver + etcd:
//! `LeaseLocker`, controller-runtime style `Options`/`run_or_die`, `Config::enabled` and
//! `get_leader`.

use k8s_openapi::api::coordination::v1::Lease;
use kube::api::{Api, ObjectMeta, PostParams};
use leasehold::{
    Config, LeaderRecord, Timing,
    backend::kubernetes::{lease_spec_to_record, record_to_lease_spec},
    compat::{CheckError, LeaseLocker, LockerError, Options, OptionsError},
};
use leasehold_testing::harness::{self, unique};
use std::time::Duration;
use tokio::time::{Instant, sleep, timeout};
use tokio_util::sync::CancellationToken;

fn fast() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(250),
        release_on_cancel: true,
    }
}

async fn client() -> leasehold::backend::kubernetes::ApiClient {
    leasehold::backend::kubernetes::client(Some(&harness::shared().await.kubeconfig("admin")))
        .await
        .unwrap()
}

/// A client for an address where nothing listens.
fn unreachable_client() -> leasehold::backend::kubernetes::ApiClient {
    let port = harness::free_port();
    let config = kube::Config::new(format!("http://127.0.0.1:{port}").parse().unwrap());
    leasehold::backend::kubernetes::client_from_config(config).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_locker_locks_blocks_unlocks_and_checks() {
    let c = client().await;
    let name = unique("Locker");
    let a = LeaseLocker::with_config(
        c.clone(),
        "default",
        &name,
        Config::new("owner-a").timing(fast()),
    );
    let b = LeaseLocker::with_config(
        c.clone(),
        "default",
        &name,
        Config::new("owner-b").timing(fast()),
    );
    assert_eq!(
        a.name(),
        name.to_lowercase(),
        "name lowercased like NewLeaseLocker"
    );
    assert!(matches!(
        a.check(Duration::ZERO),
        Err(CheckError::NotHeld(_))
    ));

    let never = CancellationToken::new();
    let la = a.lock(&never).await.unwrap();
    a.check(Duration::ZERO).unwrap();
    // b blocks while a holds; a cancelled attempt returns an error naming the lease.
    let give_up = CancellationToken::new();
    let g = give_up.clone();
    tokio::spawn(async move {
        sleep(Duration::from_millis(300)).await;
        g.cancel();
    });
    let err = b.lock(&give_up).await.unwrap_err();
    assert!(matches!(err, LockerError::Cancelled(_)), "{err}");
    assert!(err.to_string().contains(&name.to_lowercase()), "{err}");

    // b waits; a unlocks; b gets it within milliseconds with a larger token.
    let b_task = {
        let never = never.clone();
        tokio::spawn(async move {
            let l = b.lock(&never).await.unwrap();
            (b, l, Instant::now())
        })
    };
    sleep(Duration::from_millis(300)).await;
    let t0 = Instant::now();
    assert!(a.unlock().await, "unlock wrote the release");
    assert!(la.is_lost());
    assert!(matches!(
        a.check(Duration::ZERO),
        Err(CheckError::NotHeld(_))
    ));
    assert!(!a.unlock().await, "nothing left to unlock");
    let (b, lb, at) = timeout(Duration::from_secs(5), b_task)
        .await
        .unwrap()
        .unwrap();
    eprintln!(
        "LeaseLocker: unlock -> other lock() returned in {:.1} ms",
        at.duration_since(t0).as_secs_f64() * 1e3
    );
    assert!(lb.fencing_token() > la.fencing_token());
    b.check(Duration::ZERO).unwrap();
    b.unlock_with_retry(&never).await;
    let leases: Api<Lease> = Api::namespaced(c.kube().clone(), "default");
    let spec = leases
        .get(&name.to_lowercase())
        .await
        .unwrap()
        .spec
        .unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(""), "released");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_locker_without_release_on_cancel_leaves_the_lease_to_expire() {
    let c = client().await;
    let name = unique("locker-norelease");
    let a = LeaseLocker::with_config(
        c.clone(),
        "default",
        &name,
        Config::new("owner-a")
            .timing(fast())
            .release_on_cancel(false),
    );
    let cancel = CancellationToken::new();
    let l = a.lock(&cancel).await.unwrap();
    cancel.cancel();
    timeout(Duration::from_secs(2), l.lost()).await.unwrap();
    sleep(Duration::from_millis(200)).await;
    let leases: Api<Lease> = Api::namespaced(c.kube().clone(), "default");
    let spec = leases.get(&name).await.unwrap().spec.unwrap();
    assert_eq!(
        spec.holder_identity.as_deref(),
        Some("owner-a"),
        "not released"
    );
}

/// `use_observed_time(false)` trusts the record's renewTime (Go's `UseObservedTime = false`); the default
/// waits a full lease from observation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn use_observed_time_false_takes_over_a_stale_record_at_once() {
    let c = client().await;
    let leases: Api<Lease> = Api::namespaced(c.kube().clone(), "default");
    let hour_ago = jiff::Timestamp::now() - jiff::SignedDuration::from_hours(1);
    let stale = LeaderRecord::new("ghost", 15)
        .with_acquire_time(Some(hour_ago))
        .with_renew_time(Some(hour_ago))
        .with_leader_transitions(4);
    let spec = record_to_lease_spec(&stale);
    assert_eq!(lease_spec_to_record(&spec), stale, "conversions round-trip");
    for (observed, name) in [
        (false, unique("record-time")),
        (true, unique("observed-time")),
    ] {
        let created = leases
            .create(
                &PostParams::default(),
                &Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        ..Default::default()
                    },
                    spec: Some(spec.clone()),
                },
            )
            .await
            .unwrap();
        let created_at: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
        let locker = LeaseLocker::with_config(
            c.clone(),
            "default",
            &name,
            Config::new("me").use_observed_time(observed),
        );
        let cancel = CancellationToken::new();
        let g = cancel.clone();
        tokio::spawn(async move {
            sleep(Duration::from_secs(1)).await;
            g.cancel();
        });
        let r = locker.lock(&cancel).await;
        if observed {
            assert!(r.is_err(), "observed time waits the full 15 s lease");
        } else {
            let l = r.unwrap();
            // The revision of the takeover, after the stale record's.
            assert!(l.fencing_token().0 > created_at);
            locker.unlock().await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_build_an_elector_and_reject_bad_input() {
    let c = client().await;
    let name = unique("options");
    let elector = Options::new(&name)
        .namespace("default")
        .config(Config::new("opt-a").timing(fast()))
        .build(c.clone())
        .unwrap();
    let handle = elector.handle();
    assert_eq!(
        handle.get_leader(),
        "",
        "empty before the first observation"
    );
    let cancel = CancellationToken::new();
    let task = tokio::spawn(elector.run(cancel.clone()));
    let t0 = Instant::now();
    while !handle.is_leader() {
        assert!(t0.elapsed() < Duration::from_secs(10));
        sleep(Duration::from_millis(10)).await;
    }
    assert_eq!(handle.get_leader(), "opt-a");
    cancel.cancel();
    task.await.unwrap();

    let e = Options::new("Bad_Name").build(c.clone()).err().unwrap();
    assert!(matches!(e, OptionsError::Name(_)));
    assert!(e.to_string().contains("`Bad_Name`"), "{e}");
    let e = Options::new("ok")
        .namespace("Not A Namespace")
        .build(c.clone())
        .err()
        .unwrap();
    assert!(e.to_string().contains("namespace `Not A Namespace`"), "{e}");
    let e = Options::new("ok")
        .namespace("default")
        .config(Config::with_unique_identity().renew_deadline(Duration::from_secs(20)))
        .build(c.clone())
        .err()
        .unwrap();
    assert!(
        leasehold::display_chain(&e).contains("renew"),
        "{}",
        leasehold::display_chain(&e)
    );
    // The default identity is host + "_" + a UUID.
    let id = Options::new("ok")
        .build(c.clone())
        .unwrap()
        .identity()
        .to_owned();
    assert_eq!(id.rsplit_once('_').unwrap().1.len(), 36, "{id}");
}

/// `Enabled = false`: leads at once with no API request at all (the client points
/// where nothing listens).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn disabled_election_leads_at_once_without_the_api() {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let elector = Options::new("anything")
        .namespace("default")
        .config(Config::new("solo").enabled(false))
        .on_started_leading(move |l| {
            let _ = tx.send(l);
        })
        .build(unreachable_client())
        .unwrap();
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(elector.run(cancel.clone()));
    let l = timeout(Duration::from_millis(500), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert!(handle.is_leader());
    assert_eq!(handle.get_leader(), "solo");
    assert_eq!(handle.metrics().errors("unavailable"), 0, "no request made");
    cancel.cancel();
    timeout(Duration::from_secs(1), l.lost()).await.unwrap();
    task.await.unwrap();
    assert!(!handle.is_leader());

    // Enabled, the same unreachable API: never leads, get_leader stays empty.
    let elector = Options::new("anything")
        .namespace("default")
        .config(Config::new("solo"))
        .build(unreachable_client())
        .unwrap();
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(elector.run(cancel.clone()));
    sleep(Duration::from_millis(500)).await;
    assert!(!handle.is_leader());
    assert_eq!(handle.get_leader(), "");
    assert!(handle.status().last_error.is_some());
    cancel.cancel();
    task.await.unwrap();
}

/// A Lease name the API server would refuse is an error from `lock`, not a wait forever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_locker_refuses_an_invalid_name_at_once() {
    let locker = LeaseLocker::new(unreachable_client(), "default", "Not_A_Name", "me");
    let err = timeout(
        Duration::from_secs(1),
        locker.lock(&CancellationToken::new()),
    )
    .await
    .unwrap()
    .unwrap_err();
    assert!(matches!(err, LockerError::InvalidName(_)), "{err}");
    assert!(err.to_string().contains("`not_a_name`"), "{err}");
}
