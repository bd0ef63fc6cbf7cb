//! Interop with client-go on a real kube-apiserver: client-go's leader-election example (built
//! from the `k8s.io/client-go` module, as shipped: lease 60 s, renew 15 s, retry 5 s) and
//! leasehold electors on one Lease.

use leasehold::{Elector, LockBackend, Timing, backend::kubernetes::LeaseLock};
use leasehold_testing::harness::{self, Proc, unique};
use std::{path::Path, time::Duration};
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
enum Ev {
    NewLeader(String, Instant),
    Started(u64, Instant),
    Stopped(Instant),
}

fn go_timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(60),
        renew_deadline: Duration::from_secs(15),
        retry_period: Duration::from_secs(5),
        release_on_cancel: true,
    }
}

async fn wait_log(path: &Path, needle: &str, limit: Duration) -> Instant {
    let start = Instant::now();
    loop {
        if std::fs::read_to_string(path)
            .unwrap_or_default()
            .contains(needle)
        {
            return Instant::now();
        }
        assert!(
            start.elapsed() < limit,
            "`{needle}` not in {} after {limit:?}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn go_example(server: &harness::KubeServer, id: &str, name: &str) -> (Proc, std::path::PathBuf) {
    let log = server.dir().join(format!("{id}.log"));
    let args = [
        "-kubeconfig".to_owned(),
        server.kubeconfig("admin").display().to_string(),
        "-id".into(),
        id.into(),
        "-lease-lock-name".into(),
        name.into(),
        "-lease-lock-namespace".into(),
        "default".into(),
    ];
    (
        Proc::spawn(id, &harness::bins().leader_election, &args, &log),
        log,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leadership_moves_both_ways_between_client_go_and_leasehold() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(std::env::var("TEST_LOG").unwrap_or_default())
        .with_test_writer()
        .try_init();
    let server = harness::shared().await;
    let name = unique("interop");

    // 1. client-go leads.
    let (go_a, log_a) = go_example(server, "go-a", &name);
    let go_a_acquired = wait_log(
        &log_a,
        "Successfully acquired lease",
        Duration::from_secs(60),
    )
    .await;

    // 2. leasehold stands by and sees it.
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (t1, t2, t3) = (tx.clone(), tx.clone(), tx);
    let cancel = CancellationToken::new();
    let lock = LeaseLock::new(
        leasehold::backend::kubernetes::client(Some(&server.kubeconfig("admin")))
            .await
            .unwrap(),
        "default",
        &name,
    );
    let elector = Elector::new(lock, "rs-1", go_timing())
        .unwrap()
        .on_new_leader(move |who| {
            let _ = t1.send(Ev::NewLeader(who.to_owned(), Instant::now()));
        })
        .on_started_leading(move |l| {
            let _ = t2.send(Ev::Started(l.fencing_token().0, Instant::now()));
        })
        .on_stopped_leading(move || {
            let _ = t3.send(Ev::Stopped(Instant::now()));
        });
    let task = tokio::spawn(elector.run(cancel.clone()));
    let mut events = Vec::new();
    let mut next = async || {
        let e = tokio::time::timeout(Duration::from_secs(30), rx.recv())
            .await
            .expect("event")
            .expect("open");
        eprintln!("event: {e:?}");
        e
    };
    match next().await {
        Ev::NewLeader(who, _) => assert_eq!(who, "go-a"),
        other => panic!("{other:?}"),
    }

    // 3. client-go releases on SIGTERM; leasehold takes over at once (watch, not polling).
    let sigterm_at = Instant::now();
    go_a.signal(rustix::process::Signal::TERM);
    let (released_seen, started_at, token) = loop {
        match next().await {
            Ev::NewLeader(who, at) if who.is_empty() => events.push(("released", at)),
            Ev::NewLeader(who, at) if who == "rs-1" => events.push(("rs-1 observed", at)),
            Ev::Started(token, at) => {
                break (
                    events.iter().find(|e| e.0 == "released").map(|e| e.1),
                    at,
                    token,
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    };
    let released_seen = released_seen
        .expect("the Go release (empty holder) was observed before leasehold acquired");
    assert!(released_seen <= started_at);
    assert!(go_a_acquired < sigterm_at);
    let handover = started_at - sigterm_at;
    eprintln!(
        "client-go -> leasehold handover (SIGTERM to started): {:.1} ms",
        handover.as_secs_f64() * 1e3
    );
    assert!(
        handover < Duration::from_secs(5),
        "leasehold must not wait for a poll or the 60 s lease"
    );
    let rec = LeaseLock::new(
        leasehold::backend::kubernetes::client(Some(&server.kubeconfig("admin")))
            .await
            .unwrap(),
        "default",
        &name,
    )
    .get()
    .await
    .unwrap()
    .unwrap()
    .record;
    assert_eq!(rec.holder_identity, "rs-1");
    assert_eq!(rec.lease_duration_seconds, 60);
    assert_eq!(
        rec.leader_transitions, 1,
        "Go created at 0; leasehold's acquisition is the next term, counted as client-go does"
    );
    assert!(token > 0, "the resourceVersion of the acquisition");

    // 4. A new client-go candidate stands by while leasehold leads...
    let (go_b, log_b) = go_example(server, "go-b", &name);
    wait_log(&log_b, "new leader elected: rs-1", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !std::fs::read_to_string(&log_b)
            .unwrap()
            .contains("Successfully acquired lease"),
        "go-b must not lead while rs-1 does"
    );

    // 5. ...and takes over within its retry period once leasehold releases.
    let cancel_at = Instant::now();
    cancel.cancel();
    let stopped_at = match next().await {
        Ev::Stopped(at) => at,
        other => panic!("{other:?}"),
    };
    task.await.unwrap();
    let go_b_acquired = wait_log(
        &log_b,
        "Successfully acquired lease",
        Duration::from_secs(20),
    )
    .await;
    assert!(
        stopped_at < go_b_acquired,
        "leasehold stopped leading before client-go started"
    );
    let took = go_b_acquired - cancel_at;
    eprintln!(
        "leasehold -> client-go handover (cancel to acquired): {:.2} s",
        took.as_secs_f64()
    );
    // client-go polls every RetryPeriod (5 s) plus up to 1.2x jitter: at most 11 s; never the 60 s lease.
    assert!(
        took < Duration::from_secs(12),
        "client-go took {took:?}: the release was not honoured"
    );
    let rec = LeaseLock::new(
        leasehold::backend::kubernetes::client(Some(&server.kubeconfig("admin")))
            .await
            .unwrap(),
        "default",
        &name,
    )
    .get()
    .await
    .unwrap()
    .unwrap()
    .record;
    assert_eq!(rec.holder_identity, "go-b");
    assert_eq!(
        rec.leader_transitions, 2,
        "client-go counts the change from the released record"
    );
    go_b.kill();
    go_a.kill();
}

/// A leasehold candidate starting on `name`, reporting its terms as `(identity, token)`.
fn leasehold_candidate(
    client: &leasehold::backend::kubernetes::ApiClient,
    name: &str,
    id: &str,
    timing: Timing,
    tx: mpsc::UnboundedSender<(String, u64)>,
) -> (
    CancellationToken,
    leasehold::ElectorHandle,
    tokio::task::JoinHandle<()>,
) {
    let lock = LeaseLock::new(client.clone(), "default", name);
    let me = id.to_owned();
    let elector = Elector::new(lock, id, timing)
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send((me.clone(), l.fencing_token().0));
        });
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(elector.run(cancel.clone()));
    (cancel, handle, task)
}

/// Directed transfer beside client-go's example on one Lease: leasehold to leasehold while a
/// client-go candidate stands by (it never takes the Lease in between), then leasehold to the
/// client-go candidate (which reads a Lease naming itself as its own, as client-go does, and
/// keeps the transfer's token), then back by an ordinary election.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_the_lease_past_a_client_go_candidate_and_to_one() {
    use k8s_openapi::api::coordination::v1::Lease;
    use leasehold::backend::kubernetes::HANDOVER_ANNOTATION;
    let server = harness::shared().await;
    let name = unique("interop-transfer");
    let client = leasehold::backend::kubernetes::client(Some(&server.kubeconfig("admin")))
        .await
        .unwrap();
    let api: kube::Api<Lease> = kube::Api::namespaced(client.kube().clone(), "default");
    // Longer than client-go's poll (5 s jittered by up to 1.2x: at most 11 s), so that the
    // client-go target comes before the transfer's record expires.
    let timing = Timing {
        lease_duration: Duration::from_secs(15),
        renew_deadline: Duration::from_secs(10),
        retry_period: Duration::from_secs(1),
        release_on_cancel: true,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    async fn next(
        rx: &mut mpsc::UnboundedReceiver<(String, u64)>,
        limit: Duration,
    ) -> (String, u64) {
        tokio::time::timeout(limit, rx.recv())
            .await
            .unwrap_or_else(|_| panic!("no term within {limit:?}"))
            .unwrap()
    }

    let (cancel_1, h1, task_1) =
        leasehold_candidate(&client, &name, "rs-1", timing.clone(), tx.clone());
    let (who, t1) = next(&mut rx, Duration::from_secs(10)).await;
    assert_eq!(who, "rs-1");
    let (cancel_2, h2, task_2) = leasehold_candidate(&client, &name, "rs-2", timing, tx);
    let (go_c, log_c) = go_example(server, "go-c", &name);
    wait_log(&log_c, "new leader elected: rs-1", Duration::from_secs(30)).await;

    // leasehold to leasehold, while client-go polls.
    let asked = Instant::now();
    h1.transfer("rs-2").unwrap();
    let (who, t2) = next(&mut rx, Duration::from_secs(5)).await;
    let took = asked.elapsed();
    eprintln!(
        "transfer rs-1 -> rs-2 beside client-go: rs-2 leads {:.1} ms after the request",
        took.as_secs_f64() * 1e3
    );
    assert_eq!(who, "rs-2");
    assert!(t2 > t1, "a larger token: {t1} -> {t2}");
    // client-go sees the new holder at its next poll (every 5 s, jittered) and waits.
    wait_log(&log_c, "new leader elected: rs-2", Duration::from_secs(15)).await;
    let lease = api.get(&name).await.unwrap();
    assert_eq!(
        lease.spec.as_ref().unwrap().holder_identity.as_deref(),
        Some("rs-2")
    );
    assert_eq!(lease.spec.as_ref().unwrap().lease_transitions, Some(1));

    // leasehold to client-go: the example reads a Lease naming itself as its own and renews it.
    let asked = Instant::now();
    h2.transfer("go-c").unwrap();
    wait_log(
        &log_c,
        "Successfully acquired lease",
        Duration::from_secs(15),
    )
    .await;
    eprintln!(
        "transfer rs-2 -> go-c (client-go): acquired {:.2} s after the request (its poll)",
        asked.elapsed().as_secs_f64()
    );
    let lease = api.get(&name).await.unwrap();
    let spec = lease.spec.unwrap();
    assert_eq!(spec.holder_identity.as_deref(), Some("go-c"));
    assert_eq!(
        spec.lease_transitions,
        Some(2),
        "client-go keeps the transfer's count"
    );
    // client-go's writes keep the mark, but it names rs-2 and the holder is go-c: no leasehold
    // candidate acts on it.
    assert_eq!(
        lease
            .metadata
            .annotations
            .unwrap_or_default()
            .get(HANDOVER_ANNOTATION),
        Some(&"rs-2".to_owned())
    );
    assert!(rx.try_recv().is_err(), "no leasehold term while go-c leads");

    // Back by an ordinary election once client-go releases; the winner's write drops the mark.
    go_c.signal(rustix::process::Signal::TERM);
    let (who, t3) = next(&mut rx, Duration::from_secs(30)).await;
    eprintln!("after go-c released: {who} leads with token {t3}");
    assert!(t3 > t2, "a larger token: {t2} -> {t3}");
    assert_eq!(
        lease_transitions(&api, &name).await,
        3,
        "client-go's term, then leasehold's"
    );
    let lease = api.get(&name).await.unwrap();
    assert_eq!(
        lease
            .metadata
            .annotations
            .unwrap_or_default()
            .get(HANDOVER_ANNOTATION),
        None
    );
    for (cancel, task) in [(cancel_1, task_1), (cancel_2, task_2)] {
        cancel.cancel();
        task.await.unwrap();
    }
    go_c.kill();
}

async fn lease_transitions(
    api: &kube::Api<k8s_openapi::api::coordination::v1::Lease>,
    name: &str,
) -> i32 {
    let lease = api.get(name).await.unwrap();
    lease.spec.unwrap().lease_transitions.unwrap_or_default()
}
