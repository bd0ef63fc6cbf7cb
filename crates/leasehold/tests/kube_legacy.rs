//! The ConfigMap/Endpoints annotation locks, MultiLock migration, unreadable records and Events,
//! against the real kube-apiserver + etcd of the harness.

use k8s_openapi::api::core::v1::{ConfigMap, Event};
use kube::api::{Api, ListParams, ObjectMeta, PostParams};
use leasehold::{
    Elector, LockBackend, LockError, Timing,
    backend::kubernetes::{
        AnnotationLock, KubeLock, LEADER_ANNOTATION, LeaseLock, LockType, MultiLock,
    },
};
use leasehold_testing::harness::{self, unique};
use std::{
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep};
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn annotation_and_multi_locks_pass_conformance() {
    let c = client().await;
    leasehold_testing::conformance::run_all(|n| {
        AnnotationLock::config_map(c.clone(), "default", &unique(n))
    })
    .await;
    leasehold_testing::conformance::run_all(|n| {
        AnnotationLock::endpoints(c.clone(), "default", &unique(n))
    })
    .await;
    leasehold_testing::conformance::run_all(|n| {
        KubeLock::new(c.clone(), LockType::ConfigMapsLeases, "default", &unique(n))
    })
    .await;
    leasehold_testing::conformance::run_all(|n| {
        KubeLock::new(c.clone(), LockType::EndpointsLeases, "default", &unique(n))
    })
    .await;
}

/// The annotation holds client-go's encoding and nothing else of the ConfigMap changes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn configmap_lock_writes_client_go_encoding_and_keeps_the_rest() {
    let c = client().await;
    let name = unique("cm-keep");
    let cms: Api<ConfigMap> = Api::namespaced(c.kube().clone(), "default");
    cms.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some([("team".to_owned(), "a".to_owned())].into()),
                annotations: Some([("other".to_owned(), "kept".to_owned())].into()),
                ..Default::default()
            },
            data: Some([("config.yaml".to_owned(), "x: 1\n".to_owned())].into()),
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let cancel = CancellationToken::new();
    let elector = Elector::new(
        AnnotationLock::config_map(c.clone(), "default", &name),
        "a",
        fast(),
    )
    .unwrap();
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(cancel.clone()));
    let until = Instant::now() + Duration::from_secs(10);
    while !handle.is_leader() {
        assert!(Instant::now() < until, "no leader");
        sleep(Duration::from_millis(20)).await;
    }
    let cm = cms.get(&name).await.unwrap();
    let ann = cm.metadata.annotations.clone().unwrap();
    let value = &ann[LEADER_ANNOTATION];
    // Field order, names and second-precision times as client-go's json.Marshal writes them.
    let re_ok = value
        .starts_with(r#"{"holderIdentity":"a","leaseDurationSeconds":2,"acquireTime":""#)
        && value.contains(r#"Z","renewTime":""#)
        && value.ends_with(r#"Z","leaderTransitions":1}"#)
        && !value.contains('.');
    assert!(re_ok, "annotation: {value}");
    assert_eq!(ann["other"], "kept");
    assert_eq!(cm.metadata.labels.unwrap()["team"], "a");
    assert_eq!(cm.data.unwrap()["config.yaml"], "x: 1\n");
    eprintln!("configmap annotation as written: {value}");
    cancel.cancel();
    task.await.unwrap();
    let cm = cms.get(&name).await.unwrap();
    let value = &cm.metadata.annotations.unwrap()[LEADER_ANNOTATION];
    assert!(
        value.starts_with(r#"{"holderIdentity":"","leaseDurationSeconds":1,"#),
        "released: {value}"
    );
}

#[derive(Default)]
struct History(Mutex<Vec<(String, Instant, Option<Instant>)>>);

impl History {
    fn start(&self, id: &str) {
        self.0
            .lock()
            .unwrap()
            .push((id.to_owned(), Instant::now(), None));
    }
    fn stop(&self, id: &str) {
        let mut h = self.0.lock().unwrap();
        if let Some(t) = h.iter_mut().rev().find(|t| t.0 == id && t.2.is_none()) {
            t.2 = Some(Instant::now());
        }
    }
    fn names(&self) -> Vec<String> {
        self.0.lock().unwrap().iter().map(|t| t.0.clone()).collect()
    }
    fn check_no_overlap(&self) -> usize {
        let h = self.0.lock().unwrap();
        for t in h.iter() {
            eprintln!("term: {t:?}");
        }
        let far = Instant::now() + Duration::from_secs(3600);
        for (i, a) in h.iter().enumerate() {
            for b in h.iter().skip(i + 1) {
                let overlap = a.1 < b.2.unwrap_or(far) && b.1 < a.2.unwrap_or(far);
                assert!(!overlap, "two leaders at once: {a:?} and {b:?}");
            }
        }
        h.len()
    }
}

struct Cand {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<()>,
    handle: leasehold::ElectorHandle,
}

fn spawn<B: LockBackend>(lock: B, id: &str, history: &Arc<History>) -> Cand {
    let (h1, h2, i1, i2) = (
        history.clone(),
        history.clone(),
        id.to_owned(),
        id.to_owned(),
    );
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock, id, fast())
        .unwrap()
        .on_started_leading(move |_| h1.start(&i1))
        .on_stopped_leading(move || h2.stop(&i2));
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(cancel.clone()));
    Cand {
        cancel,
        task,
        handle,
    }
}

async fn stop(c: Cand) {
    c.cancel.cancel();
    c.task.await.unwrap();
}

async fn wait_for_a_leader(cands: &[&Cand]) {
    let until = Instant::now() + Duration::from_secs(15);
    while !cands.iter().any(|c| c.handle.is_leader()) {
        assert!(Instant::now() < until, "no leader among the candidates");
        sleep(Duration::from_millis(20)).await;
    }
}

/// A rolling migration configmaps → configmapsleases → leases, one replica at a time, with the
/// leader replaced at every step: never two leaders.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolling_migration_from_configmap_to_lease_never_has_two_leaders() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    let c = client().await;
    let name = unique("migrate");
    let history = Arc::new(History::default());
    let cm = || AnnotationLock::config_map(c.clone(), "default", &name);
    let lease = || LeaseLock::new(c.clone(), "default", &name);
    let multi = || MultiLock::new(cm(), lease());

    // Step 0: three candidates on the ConfigMap lock.
    let mut old = vec![
        spawn(cm(), "old-0", &history),
        spawn(cm(), "old-1", &history),
        spawn(cm(), "old-2", &history),
    ];
    wait_for_a_leader(&old.iter().collect::<Vec<_>>()).await;
    // Step 1: replace them one by one with multi-lock candidates, leader first.
    // A handover happens only when the replica taken out leads; which replica wins each
    // handover is a race, so the expected number of terms is counted, not assumed.
    let mut handovers = 0;
    let mut mid = Vec::new();
    for i in 0..3 {
        let pos = old.iter().position(|c| c.handle.is_leader());
        handovers += usize::from(pos.is_some());
        stop(old.remove(pos.unwrap_or(0))).await;
        mid.push(spawn(multi(), &format!("mid-{i}"), &history));
        let all: Vec<&Cand> = old.iter().chain(mid.iter()).collect();
        wait_for_a_leader(&all).await;
        sleep(Duration::from_millis(300)).await;
    }
    // Step 2: replace them one by one with Lease-only candidates, leader first.
    let mut new = Vec::new();
    for i in 0..3 {
        let pos = mid.iter().position(|c| c.handle.is_leader());
        handovers += usize::from(pos.is_some());
        stop(mid.remove(pos.unwrap_or(0))).await;
        new.push(spawn(lease(), &format!("new-{i}"), &history));
        let all: Vec<&Cand> = mid.iter().chain(new.iter()).collect();
        wait_for_a_leader(&all).await;
        sleep(Duration::from_millis(300)).await;
    }
    // And one crash (no release) mid-migration-style: abort the leader; another takes over
    // only after the lease.
    let pos = new.iter().position(|c| c.handle.is_leader()).unwrap();
    let crashed = new.remove(pos);
    crashed.task.abort();
    let crashed_id = crashed.handle.status().leader;
    history.stop(&crashed_id);
    wait_for_a_leader(&new.iter().collect::<Vec<_>>()).await;
    assert!(
        new.iter()
            .any(|c| c.handle.status().leader.starts_with("new-"))
    );
    for c in new {
        stop(c).await;
    }
    let terms = history.check_no_overlap();
    eprintln!(
        "rolling migration configmaps -> configmapsleases -> leases: {terms} terms \
         ({handovers} graceful handovers, 1 crash), no overlap"
    );
    // The first term, one per leader taken out, one after the crash. More would mean a leader
    // stepped down on its own, which on a loaded machine is allowed (it is the safe choice).
    assert!(
        terms > handovers + 1,
        "every leader taken out was followed: {terms} terms"
    );
    // Once the last ConfigMap-only replica is gone a multi-lock replica leads, and once the last
    // multi-lock one is gone a Lease-only one does: the migration went through both locks.
    let names = history.names();
    assert!(
        names.iter().any(|n| n.starts_with("mid-")),
        "a multi-lock term: {names:?}"
    );
    assert!(
        names.iter().any(|n| n.starts_with("new-")),
        "a Lease-only term: {names:?}"
    );
}

/// Garbage in the annotation: a clear error naming the object, no overwrite for a full lease,
/// then a takeover that says so; the elector never stops.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_malformed_annotation_is_reported_and_replaced_only_after_a_lease() {
    let c = client().await;
    let cms: Api<ConfigMap> = Api::namespaced(c.kube().clone(), "default");
    for (label, value) in [
        ("json", "{not json".to_owned()),
        ("missing", r#"{"holderIdentity":"x"}"#.to_owned()),
        ("negative", r#"{"holderIdentity":"x","leaseDurationSeconds":-5,"renewTime":"2024-01-02T03:04:07Z"}"#.to_owned()),
        // Near the API server's 256 KiB annotation limit.
        ("huge", format!(r#"{{"holderIdentity":"{}"}}"#, "x".repeat(200 * 1024))),
    ] {
        let name = unique(&format!("bad-{label}"));
        cms.create(
            &PostParams::default(),
            &ConfigMap {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    annotations: Some([(LEADER_ANNOTATION.to_owned(), value.clone())].into()),
                    ..Default::default()
                },
                ..Default::default()
            },
        )
        .await
        .unwrap();
        let lock = AnnotationLock::config_map(c.clone(), "default", &name);
        let err = lock.get().await.unwrap_err();
        let text = leasehold::display_chain(&err);
        assert!(matches!(err, LockError::Corrupt { version: Some(_), .. }), "{label}: {err:?}");
        assert!(text.contains(&format!("configmap default/{name}")), "{label}: names the object: {text}");

        let cancel = CancellationToken::new();
        let elector = Elector::new(lock, "taker", fast()).unwrap();
        let handle = elector.handle();
        let started = Instant::now();
        let task = tokio::spawn(elector.run(cancel.clone()));
        sleep(Duration::from_millis(1500)).await;
        let cm = cms.get(&name).await.unwrap();
        assert_eq!(cm.metadata.annotations.unwrap()[LEADER_ANNOTATION], value, "{label}: not overwritten within the lease");
        assert!(!handle.is_leader());
        let status = handle.status();
        let last = status.last_error.expect("the failure is in the status");
        assert_eq!(last.kind, leasehold::FailureKind::Corrupt, "{label}: {last}");
        assert!(last.object.contains(&name), "{label}: status names the object: {}", last.object);
        let until = Instant::now() + Duration::from_secs(10);
        while !handle.is_leader() {
            assert!(Instant::now() < until, "{label}: never replaced");
            sleep(Duration::from_millis(20)).await;
        }
        let took = started.elapsed();
        assert!(took >= Duration::from_secs(2), "{label}: replaced after {took:?}, before a full lease");
        eprintln!("malformed annotation ({label}, {} bytes): replaced after {:.2} s (lease 2 s)", value.len(), took.as_secs_f64());
        cancel.cancel();
        task.await.unwrap();
    }
}

/// Events on the lock object at acquisition and loss, as client-go records them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_recorded_on_the_lock() {
    let c = client().await;
    let name = unique("events");
    let history = Arc::new(History::default());
    let cand = spawn(
        LeaseLock::new(c.clone(), "default", &name).with_events(true),
        "ev-a",
        &history,
    );
    wait_for_a_leader(&[&cand]).await;
    stop(cand).await;
    let events: Api<Event> = Api::namespaced(c.kube().clone(), "default");
    let lp = ListParams::default().fields(&format!("involvedObject.name={name}"));
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let list = events.list(&lp).await.unwrap();
        let msgs: Vec<String> = list
            .items
            .iter()
            .filter(|e| e.reason.as_deref() == Some("LeaderElection"))
            .filter(|e| e.involved_object.kind.as_deref() == Some("Lease"))
            .filter_map(|e| e.message.clone())
            .collect();
        if msgs
            .iter()
            .any(|m| m.starts_with("ev-a became leader (fencing token "))
            && msgs
                .iter()
                .any(|m| m.starts_with("ev-a stopped leading (fencing token "))
        {
            eprintln!("events on lease {name}: {msgs:?}");
            break;
        }
        assert!(Instant::now() < until, "events missing: {msgs:?}");
        sleep(Duration::from_millis(100)).await;
    }
}

/// A migration candidate whose ConfigMap is gone must not overwrite a live Lease it has never
/// read (client-go's `MultiLock.Create` fails with AlreadyExists the same way), on the real API
/// server.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pair_without_its_primary_never_overwrites_a_live_lease() {
    let c = client().await;
    let name = unique("multi-create");
    let lease = LeaseLock::new(c.clone(), "default", &name);
    let held = leasehold::LeaderRecord::new("lease-only", 15)
        .with_acquire_time(Some(jiff::Timestamp::now()))
        .with_renew_time(Some(jiff::Timestamp::now()))
        .with_leader_transitions(12);
    lease.create(&held).await.unwrap();
    let multi = MultiLock::new(
        AnnotationLock::config_map(c.clone(), "default", &name),
        LeaseLock::new(c.clone(), "default", &name),
    );
    assert!(
        multi.get().await.unwrap().is_none(),
        "no primary reads as absent"
    );
    let e = multi
        .create(&{
            let mut r = held.clone();
            r.holder_identity = "multi".into();
            r.leader_transitions = 0;
            r
        })
        .await
        .unwrap_err();
    assert!(matches!(e, LockError::Conflict { .. }), "{e:?}");
    let stored = lease.get().await.unwrap().unwrap().record;
    assert_eq!(
        stored.holder_identity, "lease-only",
        "the live Lease is untouched"
    );
    assert_eq!(stored.leader_transitions, 12);
    let seen = multi.get().await.unwrap().unwrap().record;
    assert_eq!(
        seen.holder_identity,
        leasehold::backend::kubernetes::UNKNOWN_LEADER
    );
    assert_eq!(seen.leader_transitions, 12);
}
