//! The Lease backend and the elector against a real kube-apiserver + etcd (started by the
//! harness on 127.0.0.1).

use leasehold::{
    Elector, LeaderRecord, LockBackend, LockError, Timing, Version, Versioned,
    backend::kubernetes::LeaseLock,
};
use leasehold_core::lock::{BoxFuture, WatchStream};
use leasehold_testing::harness::{self, unique};
use std::{
    collections::HashMap,
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

fn fast() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(250),
        release_on_cancel: true,
    }
}

async fn lock(user: &str, name: &str) -> LeaseLock {
    let server = harness::shared().await;
    LeaseLock::new(
        leasehold::backend::kubernetes::client(Some(&server.kubeconfig(user)))
            .await
            .unwrap(),
        "default",
        name,
    )
}

#[derive(Debug)]
enum Ev {
    Started(String, u64, Instant),
    Stopped,
}

struct Candidate {
    cancel: CancellationToken,
    handle: leasehold::ElectorHandle,
    task: tokio::task::JoinHandle<()>,
}

async fn candidate(
    name: &str,
    id: &str,
    timing: Timing,
    tx: mpsc::UnboundedSender<Ev>,
) -> Candidate {
    let cancel = CancellationToken::new();
    let (t1, t2, id1, id2) = (tx.clone(), tx, id.to_owned(), id.to_owned());
    let elector = Elector::new(lock("admin", name).await, id, timing)
        .unwrap()
        .on_started_leading(move |l| {
            let _ = t1.send(Ev::Started(
                id1.clone(),
                l.fencing_token().0,
                Instant::now(),
            ));
        })
        .on_stopped_leading(move || {
            let _ = (&id2, t2.send(Ev::Stopped));
        });
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(cancel.clone()));
    Candidate {
        cancel,
        handle,
        task,
    }
}

async fn next_started(
    rx: &mut mpsc::UnboundedReceiver<Ev>,
    limit: Duration,
) -> (String, u64, Instant) {
    let deadline = Instant::now() + limit;
    loop {
        match tokio::time::timeout_at(deadline, rx.recv()).await {
            Ok(Some(Ev::Started(id, token, at))) => return (id, token, at),
            Ok(Some(Ev::Stopped)) => continue,
            other => panic!("no leader within {limit:?}: {other:?}"),
        }
    }
}

/// Three candidates `{prefix}0..2` on one Lease.
async fn three(
    name: &str,
    prefix: &str,
    tx: &mpsc::UnboundedSender<Ev>,
) -> HashMap<String, Candidate> {
    let mut cands = HashMap::new();
    for i in 0..3 {
        let id = format!("{prefix}{i}");
        cands.insert(id.clone(), candidate(name, &id, fast(), tx.clone()).await);
    }
    cands
}

async fn stop_all(cands: HashMap<String, Candidate>) {
    for (_, c) in cands {
        c.cancel.cancel();
        let _ = c.task.await;
    }
}

fn stats(name: &str, mut v: Vec<Duration>) -> Duration {
    v.sort();
    let median = v[v.len() / 2];
    eprintln!(
        "{name}: n={} min={:.1}ms median={:.1}ms max={:.1}ms",
        v.len(),
        v[0].as_secs_f64() * 1e3,
        median.as_secs_f64() * 1e3,
        v[v.len() - 1].as_secs_f64() * 1e3
    );
    median
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conformance() {
    let client =
        leasehold::backend::kubernetes::client(Some(&harness::shared().await.kubeconfig("admin")))
            .await
            .unwrap();
    leasehold_testing::conformance::run_all(|name| {
        LeaseLock::new(client.clone(), "default", &unique(name))
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rbac_denial_names_the_verb_and_resource() {
    let lock = lock("nobody", &unique("denied")).await;
    let err = lock.get().await.unwrap_err();
    assert!(
        matches!(err, LockError::Forbidden { verb: "get", .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(
        text.contains("needs `get` on `leases.coordination.k8s.io`"),
        "{text}"
    );
    let err = lock
        .create(&leasehold::LeaderRecord::default())
        .await
        .unwrap_err();
    assert!(
        err.to_string()
            .contains("needs `create` on `leases.coordination.k8s.io`"),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_electors_one_leader_and_the_stored_lease_field_by_field() {
    let name = unique("three");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cands = Vec::new();
    for i in 0..3 {
        cands.push(candidate(&name, &format!("c{i}"), fast(), tx.clone()).await);
    }
    let (leader, token, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    // Read the Lease before the first renewal (≥ 250 ms later).
    let read = lock("admin", &name).await.get().await.unwrap().unwrap();
    assert_eq!(
        read.version.revision(),
        Some(token),
        "the token is the resourceVersion of the acquisition"
    );
    let lease = read.record;
    assert_eq!(lease.holder_identity, leader);
    assert_eq!(lease.lease_duration_seconds, 2);
    assert_eq!(
        lease.leader_transitions, 0,
        "created by the first acquisition"
    );
    assert!(lease.acquire_time.is_some());
    assert_eq!(
        lease.acquire_time, lease.renew_time,
        "acquireTime == renewTime on acquire"
    );

    tokio::time::sleep(Duration::from_millis(1500)).await;
    let leaders: Vec<_> = cands.iter().filter(|c| c.handle.is_leader()).collect();
    assert_eq!(leaders.len(), 1, "exactly one leader");
    for c in &cands {
        assert_eq!(c.handle.leader(), leader);
    }
    let renewed = lock("admin", &name)
        .await
        .get()
        .await
        .unwrap()
        .unwrap()
        .record;
    assert!(renewed.renew_time > lease.renew_time, "the leader renews");
    assert_eq!(
        renewed.acquire_time, lease.acquire_time,
        "renewal keeps acquireTime"
    );
    assert_eq!(
        renewed.leader_transitions, 0,
        "renewal keeps leaseTransitions"
    );
    for c in cands {
        c.cancel.cancel();
        c.task.await.unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_handover_takes_milliseconds() {
    let name = unique("handover");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cands = three(&name, "h", &tx).await;
    let (mut leader, mut token, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    let mut times = Vec::new();
    for next_id in 3..15 {
        let old = cands.remove(&leader).unwrap();
        let t0 = Instant::now();
        old.cancel.cancel();
        let (new, new_token, at) = next_started(&mut rx, Duration::from_secs(5)).await;
        assert_ne!(new, leader);
        assert!(
            new_token > token,
            "fencing token strictly increases: {token} -> {new_token}"
        );
        times.push(at - t0);
        old.task.await.unwrap();
        let read = lock("admin", &name).await.get().await.unwrap().unwrap();
        assert!(read.version.revision().unwrap() >= new_token);
        assert_eq!(
            read.record.leader_transitions,
            next_id - 2,
            "one transition per handover, as client-go counts them"
        );
        // Keep three candidates.
        let id = format!("h{next_id}");
        cands.insert(id.clone(), candidate(&name, &id, fast(), tx.clone()).await);
        (leader, token) = (new, new_token);
    }
    let median = stats("graceful handover (cancel -> new leader started)", times);
    assert!(
        median < Duration::from_secs(1),
        "handover must not wait for expiry or polling"
    );
    stop_all(cands).await;
}

/// The real Lease lock, counting the watches its elector opens.
struct CountingWatches {
    inner: LeaseLock,
    opened: Arc<AtomicUsize>,
}

impl LockBackend for CountingWatches {
    fn describe(&self) -> String {
        self.inner.describe()
    }
    fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
        self.inner.get()
    }
    fn create(&self, record: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
        self.inner.create(record)
    }
    fn update(
        &self,
        record: &LeaderRecord,
        version: &Version,
    ) -> BoxFuture<'_, Result<Version, LockError>> {
        self.inner.update(record, version)
    }
    fn watch(&self, version: Option<&Version>) -> WatchStream {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.inner.watch(version)
    }
}

/// A leader watches nothing, and neither does a leader releasing after a cancel: it is about
/// to finish, and a watch opened beside the release would be a request, and an event to send,
/// for the API server in the middle of the handover.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_releasing_leader_opens_no_watch() {
    let name = unique("release-watch");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let opened = Arc::new(AtomicUsize::new(0));
    let backend = CountingWatches {
        inner: lock("admin", &name).await,
        opened: Arc::clone(&opened),
    };
    let t1 = tx.clone();
    let a = Elector::new(backend, "a", fast())
        .unwrap()
        .on_started_leading(move |l| {
            let _ = t1.send(Ev::Started("a".into(), l.fencing_token().0, Instant::now()));
        });
    let cancel_a = CancellationToken::new();
    let task_a = tokio::spawn(a.run(cancel_a.clone()));
    assert_eq!(next_started(&mut rx, Duration::from_secs(10)).await.0, "a");
    let b = candidate(&name, "b", fast(), tx.clone()).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    while b.handle.leader() != "a" {
        assert!(Instant::now() < deadline, "b never observed a");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel_a.cancel();
    let (new, _, _) = next_started(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(new, "b", "the release went through");
    task_a.await.unwrap();
    assert_eq!(opened.load(Ordering::SeqCst), 0, "a opened a watch");
    stop_all(HashMap::from([("b".to_owned(), b)])).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_dropped_without_release_is_replaced_after_the_lease_duration() {
    let name = unique("crash");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut cands = three(&name, "k", &tx).await;
    let (mut leader, mut token, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    let mut times = Vec::new();
    for round in 0..10 {
        let old = cands.remove(&leader).unwrap();
        let t0 = Instant::now();
        old.task.abort(); // a crash: no release, no callbacks
        let (new, new_token, at) = next_started(&mut rx, Duration::from_secs(10)).await;
        let took = at - t0;
        assert!(
            took >= Duration::from_millis(1000),
            "took over a live lease after {took:?}"
        );
        assert!(new_token > token);
        times.push(took);
        let id = format!("k{}", 3 + round);
        cands.insert(id.clone(), candidate(&name, &id, fast(), tx.clone()).await);
        (leader, token) = (new, new_token);
    }
    let median = stats(
        "crash failover (abort -> new leader started), lease 2 s",
        times,
    );
    assert!(median < Duration::from_secs(4));
    stop_all(cands).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_update_keeps_every_other_field_of_the_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    let name = unique("keep");
    let client =
        leasehold::backend::kubernetes::client(Some(&harness::shared().await.kubeconfig("admin")))
            .await
            .unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(client.kube().clone(), "default");
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": {"team": "a"}, "annotations": {"note": "keep me"}},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 7,
                 "strategy": "OldestEmulationVersion", "preferredHolder": "keeper"}
    }))
    .unwrap();
    let created = api.create(&Default::default(), &lease).await.unwrap();
    let created_at: u64 = created.metadata.resource_version.unwrap().parse().unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = candidate(&name, "keeper", fast(), tx).await;
    let (_, token, _) = next_started(&mut rx, Duration::from_secs(5)).await;
    assert!(token > created_at, "the acquisition's revision");
    tokio::time::sleep(Duration::from_millis(600)).await; // a renewal or two
    c.cancel.cancel();
    c.task.await.unwrap();
    let got = api.get(&name).await.unwrap();
    assert_eq!(got.metadata.labels.unwrap()["team"], "a");
    assert_eq!(got.metadata.annotations.unwrap()["note"], "keep me");
    let spec = got.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some(""), "released");
    assert_eq!(
        spec.lease_duration_seconds,
        Some(1),
        "released as client-go does"
    );
    assert_eq!(spec.lease_transitions, Some(8));
    assert_eq!(spec.strategy.as_deref(), Some("OldestEmulationVersion"));
    assert_eq!(
        spec.preferred_holder, None,
        "the preferred holder took the lock, and its term cleared the preference, as client-go's writes do"
    );
}

/// Coordinated Leader Election co-tenancy: a leasehold leader whose Lease gets
/// `spec.preferredHolder` naming another candidate (as the CLE controller patches it) ends its
/// term and releases the Lease naming that candidate, which takes it at once; a preference
/// naming a candidate that never comes holds the Lease free for one lease duration only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_preferred_holder_named_by_another_writer_gets_the_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    let client =
        leasehold::backend::kubernetes::client(Some(&harness::shared().await.kubeconfig("admin")))
            .await
            .unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(client.kube().clone(), "default");
    let prefer = async |name: &str, who: &str| {
        // The API server takes a preferred holder only beside a strategy.
        let patch = serde_json::json!({
            "spec": { "strategy": "OldestEmulationVersion", "preferredHolder": who }
        });
        api.patch(
            name,
            &kube::api::PatchParams::default(),
            &kube::api::Patch::Merge(&patch),
        )
        .await
        .unwrap();
    };
    for (preferred, comes) in [("cle-b", true), ("cle-nobody", false)] {
        let name = unique("cle");
        let (tx, mut rx) = mpsc::unbounded_channel();
        let a = candidate(&name, "cle-a", fast(), tx.clone()).await;
        let (who, t0, _) = next_started(&mut rx, Duration::from_secs(10)).await;
        assert_eq!(who, "cle-a");
        let b = candidate(&name, "cle-b", fast(), tx).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let asked = Instant::now();
        prefer(&name, preferred).await;
        let (who, t1, at) = next_started(&mut rx, Duration::from_secs(10)).await;
        assert!(t1 > t0, "a new term, a larger token");
        let took = at - asked;
        eprintln!("preferredHolder {preferred}: {who} leads {took:?} after the patch");
        if comes {
            assert_eq!(who, "cle-b", "the named candidate");
            assert!(
                took < Duration::from_millis(1000),
                "{took:?}: released, not left to expire"
            );
        } else {
            // Both wait a lease (2 s) for the named holder; then the Lease is anyone's, the old
            // leader's too.
            assert!(took >= Duration::from_secs(2), "{took:?}");
            assert!(took < Duration::from_secs(4), "{took:?}");
        }
        let spec = api.get(&name).await.unwrap().spec.unwrap();
        assert_eq!(spec.holder_identity.as_deref(), Some(who.as_str()));
        assert_eq!(spec.preferred_holder, None, "cleared by the new term");
        if comes {
            assert!(a.handle.leadership().is_none());
        }
        for c in [a, b] {
            c.cancel.cancel();
            c.task.await.unwrap();
        }
    }
}

/// With the opt-in `lean-client` feature and its constructor, the lock's reads, writes and
/// watches take leasehold's own HTTP/2 connection (the real API server offers HTTP/2); a watch
/// sees a write made on the same connection. The other tests in this file use the default
/// path: everything through a `kube::Client`.
#[cfg(feature = "lean-client")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lock_requests_take_the_own_http2_path() {
    use futures_util::StreamExt as _;
    let server = harness::shared().await;
    let client =
        leasehold::backend::kubernetes::client_with_http2(Some(&server.kubeconfig("admin")))
            .await
            .unwrap();
    assert!(client.is_direct());
    let lock = LeaseLock::new(client.clone(), "default", &unique("direct"));
    assert!(lock.get().await.unwrap().is_none());
    let record = LeaderRecord::new("a", 2);
    let v1 = lock.create(&record).await.unwrap();
    let mut watch = lock.watch(Some(&v1));
    let renewed = record.clone().with_leader_transitions(1);
    let v2 = lock.update(&renewed, &v1).await.unwrap();
    let seen = tokio::time::timeout(Duration::from_secs(5), watch.next())
        .await
        .expect("a watch event")
        .expect("an open watch")
        .unwrap()
        .expect("the Lease");
    assert_eq!((seen.version, seen.record), (v2.clone(), renewed));
    assert!(matches!(
        lock.update(&record, &v1).await,
        Err(LockError::Conflict { .. })
    ));
    assert!(client.is_direct(), "the API server refused HTTP/2");
}

/// A lock built from the application's own `kube::Client` sends every request through it: a
/// tower layer added to that client (as an operator adds tracing, metrics or auth) sees each of
/// the lock's reads, writes and watches. Counted on both sides, on the real API server: the
/// requests the elector made of the lock, and the requests the client's layer saw.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lock_from_the_applications_kube_client_sends_every_request_through_it() {
    static SEEN: AtomicUsize = AtomicUsize::new(0);
    let server = harness::shared().await;
    let config = leasehold::backend::kubernetes::config(Some(&server.kubeconfig("admin")))
        .await
        .unwrap();
    let client = kube::client::ClientBuilder::try_from(config)
        .unwrap()
        .with_layer(&tower::util::MapRequestLayer::new(|r| {
            SEEN.fetch_add(1, Ordering::SeqCst);
            r
        }))
        .build();
    let api: leasehold::backend::kubernetes::ApiClient = client.into();
    assert!(!api.is_direct());

    #[derive(Clone)]
    struct Counted(LeaseLock, Arc<AtomicUsize>);
    impl LockBackend for Counted {
        fn describe(&self) -> String {
            self.0.describe()
        }
        fn get(&self) -> BoxFuture<'_, Result<Option<Versioned>, LockError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.get()
        }
        fn create(&self, r: &LeaderRecord) -> BoxFuture<'_, Result<Version, LockError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.create(r)
        }
        fn update(
            &self,
            r: &LeaderRecord,
            v: &Version,
        ) -> BoxFuture<'_, Result<Version, LockError>> {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.update(r, v)
        }
        fn watch(&self, v: Option<&Version>) -> WatchStream {
            self.1.fetch_add(1, Ordering::SeqCst);
            self.0.watch(v)
        }
    }
    let name = unique("through-kube");
    let made = Arc::new(AtomicUsize::new(0));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (t1, t2) = (tx.clone(), tx);
    let mut electors = Vec::new();
    for id in ["a", "b"] {
        let lock = Counted(LeaseLock::new(api.clone(), "default", &name), made.clone());
        let cancel = CancellationToken::new();
        let (t1, t2) = (t1.clone(), t2.clone());
        let who = id.to_owned();
        let elector = Elector::new(lock, id, fast())
            .unwrap()
            .on_started_leading(move |l| {
                let _ = t1.send(Ev::Started(
                    who.clone(),
                    l.fencing_token().0,
                    Instant::now(),
                ));
            })
            .on_stopped_leading(move || {
                let _ = t2.send(Ev::Stopped);
            });
        electors.push((cancel.clone(), tokio::spawn(elector.run(cancel))));
    }
    let first = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .unwrap();
    assert!(matches!(first, Some(Ev::Started(..))), "{first:?}");
    // A few renewals, then a graceful handover.
    tokio::time::sleep(Duration::from_secs(2)).await;
    electors[0].0.cancel();
    electors[1].0.cancel();
    for (_, task) in electors {
        task.await.unwrap();
    }
    let (made, seen) = (made.load(Ordering::SeqCst), SEEN.load(Ordering::SeqCst));
    println!("lock requests made: {made}; requests the application's client saw: {seen}");
    assert!(made >= 4, "{made}");
    // An update whose cached object is stale reads it first: more requests, never fewer.
    assert!(
        seen >= made,
        "a lock request bypassed the application's client"
    );
}

/// Writers that change the holder without incrementing `leaseTransitions` (`kubectl edit`, the
/// Coordinated Leader Election controller, a buggy client), or that delete and re-create the
/// Lease with a smaller count, even while no candidate runs: no leasehold term ever starts with
/// a token an earlier term had.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_term_repeats_a_token_whatever_else_writes_the_lease() {
    use k8s_openapi::api::coordination::v1::Lease;
    let client =
        leasehold::backend::kubernetes::client(Some(&harness::shared().await.kubeconfig("admin")))
            .await
            .unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(client.kube().clone(), "default");
    let name = unique("tokens");
    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = candidate(&name, "tok-a", fast(), tx.clone()).await;
    let b = candidate(&name, "tok-b", fast(), tx).await;
    let mut tokens = Vec::new();
    let (_, t, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    tokens.push(t);
    // Replaces the holder, keeping the count, as `kubectl edit` would.
    let set_holder = async |who: &str| {
        let mut lease = api.get(&name).await.unwrap();
        let spec = lease.spec.as_mut().unwrap();
        spec.holder_identity = Some(who.into());
        spec.renew_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime(
            jiff::Timestamp::now(),
        ));
        api.replace(&name, &Default::default(), &lease)
            .await
            .unwrap();
    };
    // 1. To an identity no candidate has: the leader steps down; the next term waits out the
    //    intruder's lease and takes the next token, not the intruder's count.
    set_holder("intruder").await;
    let (_, t, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    tokens.push(t);
    // 2. To a standby's own identity, count unchanged: it does not adopt a term it did not
    //    start (its token would be the last term's); it waits, then acquires with a new token.
    let leader = api
        .get(&name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .holder_identity
        .unwrap();
    let standby = if leader == "tok-a" { "tok-b" } else { "tok-a" };
    set_holder(standby).await;
    let (who, t, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    tokens.push(t);
    eprintln!("after a foreign write naming {standby}: {who} leads with token {t}");
    // 3. Deleted, and re-created at count 0 by another client (client-go counts from the
    //    record it finds): the running candidates continue from the highest count they saw.
    api.delete(&name, &Default::default()).await.unwrap();
    let fresh: Lease = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": { "holderIdentity": "go-peer", "leaseDurationSeconds": 1, "leaseTransitions": 0,
                  "acquireTime": "2026-01-01T00:00:00.000000Z", "renewTime": "2026-01-01T00:00:00.000000Z" }
    }))
    .unwrap();
    api.create(&Default::default(), &fresh).await.unwrap();
    let (_, t, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    tokens.push(t);
    // 4. Every candidate gone, the Lease deleted and re-created at count 0: nobody remembers
    //    the old count, and the fresh candidate's token is still larger (a token is the
    //    revision of the write that began the term, not the count).
    for c in [a, b] {
        c.cancel.cancel();
        c.task.await.unwrap();
    }
    api.delete(&name, &Default::default()).await.unwrap();
    api.create(&Default::default(), &fresh).await.unwrap();
    let (tx, mut rx) = mpsc::unbounded_channel();
    let c = candidate(&name, "tok-c", fast(), tx).await;
    let (_, t, _) = next_started(&mut rx, Duration::from_secs(10)).await;
    tokens.push(t);
    let counts = api
        .get(&name)
        .await
        .unwrap()
        .spec
        .unwrap()
        .lease_transitions;
    eprintln!("tokens: {tokens:?} (the last Lease counts {counts:?})");
    assert!(
        tokens.windows(2).all(|w| w[1] > w[0]),
        "strictly increasing: {tokens:?}"
    );
    c.cancel.cancel();
    c.task.await.unwrap();
}

/// A directed transfer on a real Lease: the named candidate leads within milliseconds with the
/// next token, nobody else leads in between, the mark is an annotation that the target's first
/// renewal removes, and every other annotation stays.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_hands_the_lease_to_the_named_candidate() {
    use k8s_openapi::api::coordination::v1::Lease;
    use leasehold::backend::kubernetes::HANDOVER_ANNOTATION;
    let name = unique("transfer");
    let client =
        leasehold::backend::kubernetes::client(Some(&harness::shared().await.kubeconfig("admin")))
            .await
            .unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(client.kube().clone(), "default");
    let lease: Lease = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "annotations": {"note": "keep me"}},
        "spec": {"holderIdentity": "", "leaseDurationSeconds": 1, "leaseTransitions": 4}
    }))
    .unwrap();
    api.create(&Default::default(), &lease).await.unwrap();

    let (tx, mut rx) = mpsc::unbounded_channel();
    let a = candidate(&name, "tr-a", fast(), tx.clone()).await;
    let (who, first, _) = next_started(&mut rx, Duration::from_secs(5)).await;
    assert_eq!(who, "tr-a");
    let b = candidate(&name, "tr-b", fast(), tx.clone()).await;
    let c = candidate(&name, "tr-c", fast(), tx).await;
    tokio::time::sleep(Duration::from_millis(500)).await; // both watching

    let asked = Instant::now();
    a.handle.transfer("tr-c").unwrap();
    let (who, token, at) = next_started(&mut rx, Duration::from_secs(5)).await;
    eprintln!(
        "transfer tr-a -> tr-c on a Lease: tr-c leads {:.1} ms after the request",
        (at - asked).as_secs_f64() * 1e3
    );
    assert_eq!(who, "tr-c", "only the named candidate takes the term");
    assert!(token > first, "a larger token: {first} -> {token}");
    assert!(at - asked < Duration::from_secs(1), "{:?}", at - asked);

    // Nobody else leads, then or after; the target renews, which removes the mark.
    tokio::time::sleep(Duration::from_secs(3)).await;
    while let Ok(ev) = rx.try_recv() {
        assert!(!matches!(ev, Ev::Started(..)), "a second term: {ev:?}");
    }
    assert!(c.handle.leadership().is_some());
    let got = api.get(&name).await.unwrap();
    let annotations = got.metadata.annotations.unwrap();
    assert_eq!(annotations["note"], "keep me");
    assert_eq!(
        annotations.get(HANDOVER_ANNOTATION),
        None,
        "removed by the renewal"
    );
    let spec = got.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("tr-c"));
    assert_eq!(spec.lease_transitions, Some(6));

    // Bad requests: not leading, or to itself.
    assert_eq!(
        b.handle.transfer("tr-a"),
        Err(leasehold::TransferError::NotLeading)
    );
    assert_eq!(
        c.handle.transfer("tr-c"),
        Err(leasehold::TransferError::BadTarget("tr-c".into()))
    );
    stop_all(
        [("a", a), ("b", b), ("c", c)]
            .map(|(k, v)| (k.to_owned(), v))
            .into(),
    )
    .await;
}
