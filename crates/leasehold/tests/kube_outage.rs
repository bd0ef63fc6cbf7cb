//! The API server hangs (SIGSTOP) or stops while leasehold leads: the leader must step down
//! within the renew deadline, before its lease could expire for anyone else, and lead again
//! once the server is back. Runs its own kube-apiserver, since it stops it.

use leasehold::{Elector, Timing, backend::kubernetes::LeaseLock};
use leasehold_testing::harness::{KubeServer, unique};
use std::time::Duration;
use tokio::{sync::mpsc, time::Instant};
use tokio_util::sync::CancellationToken;

#[derive(Debug)]
enum Ev {
    Started(u64),
    Stopped(Instant),
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Ev>, limit: Duration) -> Ev {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("no event within {limit:?}"))
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_steps_down_within_the_renew_deadline_when_the_api_server_hangs_or_stops() {
    let mut server = KubeServer::start().await;
    let timing = Timing {
        lease_duration: Duration::from_secs(4),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let t2 = tx.clone();
    let cancel = CancellationToken::new();
    let lock = LeaseLock::new(
        leasehold::backend::kubernetes::client(Some(&server.kubeconfig("admin")))
            .await
            .unwrap(),
        "default",
        &unique("outage"),
    );
    let elector = Elector::new(lock, "solo", timing.clone())
        .unwrap()
        .on_started_leading(move |l| {
            let _ = tx.send(Ev::Started(l.fencing_token().0));
        })
        .on_stopped_leading(move || {
            let _ = t2.send(Ev::Stopped(Instant::now()));
        });
    let task = tokio::spawn(elector.run(cancel.clone()));
    let Ev::Started(mut token) = next(&mut rx, Duration::from_secs(10)).await else {
        panic!()
    };
    tokio::time::sleep(Duration::from_secs(1)).await; // steady renewals

    // 1. The API server hangs: requests neither fail nor answer.
    let frozen_at = Instant::now();
    server
        .apiserver()
        .unwrap()
        .signal(rustix::process::Signal::STOP);
    let Ev::Stopped(stopped_at) = next(&mut rx, Duration::from_secs(10)).await else {
        panic!()
    };
    let took = stopped_at - frozen_at;
    eprintln!(
        "API server frozen -> leader stopped: {:.0} ms (renew deadline 2 s, lease 4 s)",
        took.as_secs_f64() * 1e3
    );
    // The last successful renewal was sent before the freeze, so the step-down comes at most a
    // renew deadline after the freeze (plus scheduling noise), well before the lease.
    assert!(
        took < timing.lease_duration,
        "leader kept leading {took:?} into a hung API server"
    );
    server
        .apiserver()
        .unwrap()
        .signal(rustix::process::Signal::CONT);
    let Ev::Started(t) = next(&mut rx, Duration::from_secs(20)).await else {
        panic!()
    };
    assert!(t > token, "a new term gets a larger token");
    token = t;
    tokio::time::sleep(Duration::from_secs(1)).await;

    // 2. The API server is stopped: connections are refused.
    let stopped_server_at = Instant::now();
    server.stop_apiserver();
    let Ev::Stopped(stopped_at) = next(&mut rx, Duration::from_secs(10)).await else {
        panic!()
    };
    let took = stopped_at - stopped_server_at;
    eprintln!(
        "API server killed -> leader stopped: {:.0} ms",
        took.as_secs_f64() * 1e3
    );
    assert!(took < timing.lease_duration);
    server.restart_apiserver().await;
    let Ev::Started(t) = next(&mut rx, Duration::from_secs(30)).await else {
        panic!()
    };
    assert!(t > token);
    cancel.cancel();
    task.await.unwrap();
}
