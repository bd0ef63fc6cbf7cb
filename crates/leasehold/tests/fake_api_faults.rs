//! API-server answers a real server won't give on demand, from a fake on 127.0.0.1 (it adds
//! edge cases; the real kube-apiserver tests stay the proof): 403, 404 after a create, 409
//! storms, 410 on watch, 429 with Retry-After, 500, non-JSON bodies, hung requests. The elector
//! stays alive, reports the error, and its safety rule holds.

use leasehold::{Elector, FailureKind, Timing, backend::kubernetes::LeaseLock};
use leasehold_testing::fake_api::{FakeApi, Fault};
use std::time::Duration;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(250),
        release_on_cancel: true,
    }
}

#[derive(Debug, PartialEq)]
enum Ev {
    Started(u64),
    Stopped,
}

struct Cand {
    cancel: CancellationToken,
    rx: mpsc::UnboundedReceiver<(Ev, Instant)>,
    handle: leasehold::ElectorHandle,
    task: tokio::task::JoinHandle<()>,
}

fn candidate(fake: &FakeApi, id: &str) -> Cand {
    let client = leasehold::backend::kubernetes::client_from_config(fake.config()).unwrap();
    let (tx, rx) = mpsc::unbounded_channel();
    let t2 = tx.clone();
    let cancel = CancellationToken::new();
    let elector = Elector::new(LeaseLock::new(client, "default", "x"), id, timing())
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send((Ev::Started(l.fencing_token().0), Instant::now()));
        })
        .on_stopped_leading(move || {
            let _ = t2.send((Ev::Stopped, Instant::now()));
        });
    let handle = elector.handle();
    let task = tokio::spawn(elector.run(cancel.clone()));
    Cand {
        cancel,
        rx,
        handle,
        task,
    }
}

async fn next(c: &mut Cand, limit: Duration) -> (Ev, Instant) {
    tokio::time::timeout(limit, c.rx.recv())
        .await
        .expect("event in time")
        .expect("open")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn short_faults_of_every_kind_are_ridden_out_and_reported() {
    let fake = FakeApi::start().await;
    let mut a = candidate(&fake, "a");
    // The token is the revision of the write that began the term.
    assert!(matches!(
        next(&mut a, Duration::from_secs(5)).await.0,
        Ev::Started(_)
    ));
    let mut status = a.handle.subscribe();
    for fault in [
        Fault::Status(500),
        Fault::TooManyRequests,
        Fault::NotJson,
        Fault::Status(403),
        Fault::Status(409),
    ] {
        status.borrow_and_update();
        fake.inject(fault.clone(), 2);
        // Two failed renewals (~0.5 s) are well inside the 2 s renew deadline.
        let seen_error = tokio::time::timeout(
            Duration::from_secs(3),
            status.wait_for(|s| s.last_error.is_some()),
        )
        .await
        .map(|s| s.map(|s| s.last_error.clone()).ok().flatten());
        tokio::time::sleep(Duration::from_millis(800)).await;
        fake.clear();
        assert!(
            a.handle.is_leader(),
            "{fault:?}: leadership lost over a short fault"
        );
        assert!(a.rx.try_recv().is_err(), "{fault:?}: no step-down");
        if fault != Fault::Status(409) {
            let err = seen_error
                .ok()
                .flatten()
                .unwrap_or_else(|| panic!("{fault:?}: the error was reported"));
            // Typed, so an operator can act on the kind without parsing the message.
            // A garbled answer is taken as transient, as a 5xx is.
            let kind = match fault {
                Fault::Status(403) => FailureKind::Forbidden,
                _ => FailureKind::Unavailable,
            };
            assert_eq!(err.kind, kind, "{fault:?}: {err}");
            assert!(err.object.contains("lease"), "{fault:?}: {}", err.object);
            eprintln!(
                "{fault:?} reported as {:?} on {}: {err}",
                err.kind, err.object
            );
        }
    }
    assert!(!a.task.is_finished(), "the elector is still alive");
    a.cancel.cancel();
    a.task.await.unwrap();
    assert_eq!(
        fake.spec().unwrap()["holderIdentity"],
        "",
        "released at the end"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lasting_fault_makes_the_leader_step_down_before_the_lease_and_it_recovers() {
    for fault in [
        Fault::Hang,
        Fault::Status(500),
        Fault::TooManyRequests,
        Fault::NotJson,
        // A 409 storm: conflicts mean "read again", never "keep leading without a renewal".
        Fault::Status(409),
    ] {
        let fake = FakeApi::start().await;
        let mut a = candidate(&fake, "a");
        let (_, started) = next(&mut a, Duration::from_secs(5)).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let fault_at = Instant::now();
        fake.inject(fault.clone(), u32::MAX);
        let (ev, at) = next(&mut a, Duration::from_secs(5)).await;
        assert_eq!(ev, Ev::Stopped, "{fault:?}");
        // The last good renewal was sent before the fault, so the step-down comes at most the
        // renew deadline (2 s) after it: before the 3 s lease could expire for anyone.
        let took = at - fault_at;
        assert!(
            took <= Duration::from_millis(2300),
            "{fault:?}: stepped down {took:?} after the fault"
        );
        assert!(at > started);
        fake.clear();
        let (ev, _) = next(&mut a, Duration::from_secs(10)).await;
        assert!(
            matches!(ev, Ev::Started(t) if t > 1),
            "{fault:?}: leads again with a new token: {ev:?}"
        );
        a.cancel.cancel();
        a.task.await.unwrap();
        eprintln!(
            "{fault:?}: stepped down {:.0} ms after the fault began",
            took.as_secs_f64() * 1e3
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_answered_with_410_falls_back_to_reads_and_still_sees_the_release() {
    let fake = FakeApi::start().await;
    let mut a = candidate(&fake, "a");
    let Ev::Started(first) = next(&mut a, Duration::from_secs(5)).await.0 else {
        panic!("a leads first")
    };
    fake.watch_gone(true);
    let mut b = candidate(&fake, "b");
    tokio::time::sleep(Duration::from_secs(1)).await;
    let watches = fake.requests().get("GET watch").copied().unwrap_or(0);
    a.cancel.cancel();
    a.task.await.unwrap();
    let (ev, _) = next(&mut b, Duration::from_secs(5)).await;
    assert!(
        matches!(ev, Ev::Started(t) if t > first),
        "{ev:?} after {first}"
    );
    // Watch restarts back off (100 ms doubling to the retry period), not a hot loop.
    assert!(watches < 30, "{watches} watch attempts in ~1 s");
    b.cancel.cancel();
    b.task.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_404_right_after_a_create_never_makes_a_second_leader() {
    let fake = FakeApi::start().await;
    let mut a = candidate(&fake, "a");
    // The token is the revision of the write that began the term.
    assert!(matches!(
        next(&mut a, Duration::from_secs(5)).await.0,
        Ev::Started(_)
    ));
    // b's first read says the Lease does not exist (a stale read right after a's create).
    fake.inject(Fault::Status(404), 1);
    let mut b = candidate(&fake, "b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(b.rx.try_recv().is_err(), "b must not lead");
    assert!(a.handle.is_leader());
    assert_eq!(b.handle.leader(), "a");
    b.cancel.cancel();
    a.cancel.cancel();
    a.task.await.unwrap();
    b.task.await.unwrap();
}

/// The Pod's role label is set without touching the Pod's other labels, even when the API server
/// answers the first try with a 500: the old fallback then replaced the whole label map
/// (`add /metadata/labels`), and a Pod that loses `app=...` is orphaned by its ReplicaSet,
/// which starts another.
#[tokio::test]
async fn a_failed_label_patch_never_drops_the_pods_other_labels() {
    use leasehold::backend::kubernetes::set_pod_label;
    let fake = FakeApi::start().await;
    let mut labels = serde_json::Map::new();
    labels.insert("app".into(), "web".into());
    labels.insert("pod-template-hash".into(), "5d8f".into());
    fake.put_pod(labels);
    let client = kube::Client::try_from(fake.config()).unwrap();
    fake.inject(Fault::Status(500), 1);
    let first = set_pod_label(&client, "default", "pod", "k8s-elector/status", "leader").await;
    let after_first = fake.pod_labels().unwrap();
    println!(
        "after a 500: {first:?}, labels {after_first:?}, patches {:?}",
        fake.pod_patches()
    );
    assert_eq!(
        after_first.get("app").and_then(|v| v.as_str()),
        Some("web"),
        "other labels survive"
    );
    // The caller retries (the CLI's labeller does, every second).
    set_pod_label(&client, "default", "pod", "k8s-elector/status", "leader")
        .await
        .unwrap();
    let labels = fake.pod_labels().unwrap();
    assert_eq!(labels.get("app").and_then(|v| v.as_str()), Some("web"));
    assert_eq!(
        labels.get("pod-template-hash").and_then(|v| v.as_str()),
        Some("5d8f")
    );
    assert_eq!(
        labels.get("k8s-elector/status").and_then(|v| v.as_str()),
        Some("leader")
    );
}
