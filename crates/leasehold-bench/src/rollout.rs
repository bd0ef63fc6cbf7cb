//! `leasehold-bench rollout`: leadership moves and leaderless time per rolling update.
//!
//! A Deployment's rolling update (maxSurge 1, maxUnavailable 0) of N sidecar replicas,
//! simulated on the real API server: a Pod of the new revision is added, then one old Pod is
//! removed, chosen as the ReplicaSet controller ranks Pods for deletion when they are alike
//! otherwise (lower `controller.kubernetes.io/pod-deletion-cost` first, then the newer Pod
//! first), and its candidate gets SIGTERM, as the kubelet sends it. The leader starts on the
//! newest old Pod, the one removed first without a deletion cost. For each candidate kind:
//! how many times leadership moved per rollout, and the leaderless time summed over the
//! rollout (from a leader's stop to the next leader's start).

use crate::cand::{Cand, Durations, Ev, Impl, Paths};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use leasehold_testing::harness::KubeServer;
use std::{fmt::Write as _, path::PathBuf, time::Duration};
use tokio::time::{Instant, sleep};

/// What to run.
pub struct Opts {
    /// Replicas of the Deployment.
    pub replicas: usize,
    /// Rollouts per candidate kind.
    pub runs: usize,
    /// Where the table goes (also printed).
    pub out: Option<PathBuf>,
}

/// One rollout's outcome.
struct Outcome {
    moves: usize,
    leaderless: Duration,
    ends_on_new: bool,
}

/// The sidecar's timing in this benchmark (as the main table's).
const D: Durations = Durations {
    lease: Duration::from_secs(2),
    renew: Duration::from_secs(1),
    retry: Duration::from_millis(250),
};

pub async fn run(server: &KubeServer, paths: &Paths, opts: &Opts) {
    let client = server.client("admin").await;
    leasehold_testing::harness::ensure_default_service_account(&client, "default").await;
    let mut table = String::new();
    let _ = writeln!(
        table,
        "Rolling update of {} sidecar replicas (maxSurge 1, maxUnavailable 0, the ReplicaSet's deletion ranking), {} rollouts each; lease 2 s, renew deadline 1 s, retry 250 ms.\n",
        opts.replicas, opts.runs
    );
    let _ = writeln!(
        table,
        "| candidate | leadership moves per rollout (median, max) | leaderless per rollout (median, max) | ends on a new-revision Pod | target |"
    );
    let _ = writeln!(table, "|---|---|---|---|---|");
    for imp in [Impl::LhSidecar, Impl::GoElector] {
        let mut outcomes = Vec::new();
        for run in 0..opts.runs {
            let o = rollout(server, &client, paths, imp, opts.replicas, run).await;
            eprintln!(
                "{} rollout {run}: {} moves, {:.0} ms leaderless, ends on a new Pod: {}",
                imp.label(),
                o.moves,
                o.leaderless.as_secs_f64() * 1000.0,
                o.ends_on_new
            );
            outcomes.push(o);
        }
        let mut moves: Vec<usize> = outcomes.iter().map(|o| o.moves).collect();
        moves.sort_unstable();
        let mut gaps: Vec<Duration> = outcomes.iter().map(|o| o.leaderless).collect();
        gaps.sort();
        let new = outcomes.iter().filter(|o| o.ends_on_new).count();
        let target = if imp == Impl::LhSidecar {
            if moves.iter().all(|m| *m == 1) && new == outcomes.len() {
                "1 move to the new revision: PASS"
            } else {
                "1 move to the new revision: MISS"
            }
        } else {
            ""
        };
        let _ = writeln!(
            table,
            "| {} | {}, {} | {:.0} ms, {:.0} ms | {new}/{} | {target} |",
            imp.label(),
            moves[moves.len() / 2],
            moves[moves.len() - 1],
            gaps[gaps.len() / 2].as_secs_f64() * 1000.0,
            gaps[gaps.len() - 1].as_secs_f64() * 1000.0,
            outcomes.len()
        );
    }
    println!("{table}");
    if let Some(out) = &opts.out {
        let text = format!(
            "# Rolling updates\n\nWritten by `cargo run --release -p leasehold-bench -- rollout` on {}.\n\n{table}",
            jiff::Timestamp::now().strftime("%Y-%m-%d")
        );
        if let Err(e) = std::fs::write(out, text) {
            eprintln!("leasehold-bench: cannot write {}: {e}", out.display());
        }
    }
}

/// One rollout of `n` replicas of `imp`.
async fn rollout(
    server: &KubeServer,
    client: &kube::Client,
    paths: &Paths,
    imp: Impl,
    n: usize,
    run: usize,
) -> Outcome {
    let kc = server.kubeconfig("admin");
    let app = format!("roll-{}-{run}", imp.short());
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let create = async |name: &str| {
        let pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": { "name": name, "labels": { "app": app } },
            "spec": { "containers": [{ "name": "app", "image": "registry.example/app:1" }] }
        }))
        .expect("pod");
        let _ = pods.delete(name, &Default::default()).await;
        pods.create(&PostParams::default(), &pod)
            .await
            .expect("create pod");
    };
    let spawn = |name: &str| {
        let extra: &[&str] = if imp == Impl::LhSidecar {
            &["--pod-name", name]
        } else {
            &[]
        };
        Cand::spawn_with(imp, paths, &kc, &app, name, D, 1, extra).expect("spawn")
    };
    // Events of every candidate, in one stream: (pod, event, when).
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(String, Ev, Instant)>();
    let forward = |name: String, mut c: Cand| {
        let tx = tx.clone();
        let (ev_tx, mut ev_rx) = (
            tx,
            std::mem::replace(&mut c.rx, tokio::sync::mpsc::unbounded_channel().1),
        );
        tokio::spawn(async move {
            while let Some((ev, at)) = ev_rx.recv().await {
                let _ = ev_tx.send((name.clone(), ev, at));
            }
        });
        c
    };
    let names: Vec<String> = (0..n).map(|i| format!("{app}-old-{i}")).collect();
    for name in &names {
        create(name).await;
    }
    // The newest old Pod's candidate starts first, so it leads.
    let mut old: Vec<(String, Cand)> = Vec::new();
    old.push((
        names[n - 1].clone(),
        forward(names[n - 1].clone(), spawn(&names[n - 1])),
    ));
    let mut log: Vec<(String, Ev, Instant)> = Vec::new();
    let t0 = Instant::now();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), rx.recv()).await {
            Ok(Some(e)) => {
                let started = e.1 == Ev::Started;
                log.push(e);
                if started {
                    break;
                }
            }
            _ => panic!("{}: no first leader within {:?}", imp.label(), t0.elapsed()),
        }
    }
    for name in names.iter().take(n - 1) {
        let c = forward(name.clone(), spawn(name));
        old.insert(old.len() - 1, (name.clone(), c));
    }
    sleep(Duration::from_millis(1500)).await;
    let mut new: Vec<Cand> = Vec::new();
    for i in 0..n {
        let name = format!("{app}-new-{i}");
        create(&name).await;
        new.push(forward(name.clone(), spawn(&name)));
        sleep(Duration::from_millis(700)).await;
        let names: Vec<&str> = old.iter().map(|(n, _)| n.as_str()).collect();
        let idx = leasehold_testing::harness::next_pod_to_delete(client, "default", &names).await;
        let (name, cand) = old.remove(idx);
        cand.signal(rustix::process::Signal::TERM);
        cand.stop().await;
        let _ = pods.delete(&name, &Default::default()).await;
    }
    // Time for the last handover to finish.
    sleep(Duration::from_millis(2 * D.lease.as_millis() as u64)).await;
    while let Ok(e) = rx.try_recv() {
        log.push(e);
    }
    for c in new {
        c.stop().await;
    }
    for (name, _) in (0..n).map(|i| (format!("{app}-new-{i}"), ())) {
        let _ = pods.delete(&name, &Default::default()).await;
    }
    // Moves: starts after the first; leaderless: each stop to the next start.
    let mut moves = 0;
    let mut leaderless = Duration::ZERO;
    let mut stopped_at: Option<Instant> = None;
    let mut last_leader = String::new();
    log.sort_by_key(|e| e.2);
    for (who, ev, at) in &log {
        match ev {
            Ev::Started => {
                if !last_leader.is_empty() && *who != last_leader {
                    moves += 1;
                }
                if let Some(s) = stopped_at.take() {
                    leaderless += at.saturating_duration_since(s);
                }
                last_leader = who.clone();
            }
            Ev::Stopped if *who == last_leader => stopped_at = Some(*at),
            Ev::Stopped => {}
        }
    }
    Outcome {
        moves,
        leaderless,
        ends_on_new: last_leader.contains("-new-"),
    }
}
