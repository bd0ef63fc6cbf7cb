//! `leasehold run --backend kube` and `status` as processes against a real kube-apiserver + etcd.

use leasehold_testing::harness::{self, unique};
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

fn sidecar(kubeconfig: &Path, name: &str, id: &str, log: &Path) -> Child {
    // The child logs `start ID TOKEN` and, on SIGTERM, `stop ID TOKEN`.
    let child = r#"echo "start $LEASEHOLD_IDENTITY $LEASEHOLD_FENCING_TOKEN" >> "$LOG"; trap 'echo "stop $LEASEHOLD_IDENTITY $LEASEHOLD_FENCING_TOKEN" >> "$LOG"; exit 0' TERM; while true; do sleep 0.05; done"#;
    Command::new(BIN)
        .args([
            "run",
            "--backend",
            "kube",
            "--namespace",
            "default",
            "--name",
            name,
            "--id",
            id,
        ])
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args([
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1s",
            "--retry-period",
            "250ms",
            "--",
            "sh",
            "-c",
            child,
        ])
        .env("LOG", log)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

fn lines(log: &Path) -> Vec<Vec<String>> {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .map(|l| l.split_whitespace().map(str::to_owned).collect())
        .collect()
}

async fn wait_starts(log: &Path, n: usize, limit: Duration) -> Instant {
    let t0 = Instant::now();
    loop {
        if lines(log).iter().filter(|l| l[0] == "start").count() >= n {
            return Instant::now();
        }
        assert!(
            t0.elapsed() < limit,
            "no start #{n} within {limit:?}: {:?}",
            lines(log)
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

fn status_json(kubeconfig: &Path, name: &str) -> serde_json::Value {
    let out = Command::new(BIN)
        .args([
            "status",
            "--backend",
            "kube",
            "--namespace",
            "default",
            "--name",
            name,
            "--json",
            "--kubeconfig",
        ])
        .arg(kubeconfig)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_hand_over_on_sigterm_and_kill_9_with_one_child_at_a_time() {
    let server = harness::shared().await;
    let kc = server.kubeconfig("admin");
    let name = unique("sidecar");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let mut procs: Vec<(String, Child)> = (0..3)
        .map(|i| {
            let id = format!("s{i}");
            (id.clone(), sidecar(&kc, &name, &id, &log))
        })
        .collect();
    wait_starts(&log, 1, Duration::from_secs(20)).await;

    let mut handovers = Vec::new();
    for round in 0..10 {
        let leader = lines(&log).iter().rev().find(|l| l[0] == "start").unwrap()[1].clone();
        let st = status_json(&kc, &name);
        assert_eq!(st["holder"], leader.as_str());
        let idx = procs.iter().position(|(id, _)| *id == leader).unwrap();
        let (_, mut p) = procs.remove(idx);
        let t0 = Instant::now();
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(p.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        let at = wait_starts(&log, round + 2, Duration::from_secs(10)).await;
        handovers.push(at - t0);
        assert_eq!(p.wait().unwrap().code(), Some(0));
        let id = format!("s{}", round + 3);
        procs.push((id.clone(), sidecar(&kc, &name, &id, &log)));
    }
    handovers.sort();
    eprintln!(
        "sidecar graceful handover (SIGTERM to the next child's start, via child stop + release): n={} min={:.1}ms median={:.1}ms max={:.1}ms",
        handovers.len(),
        handovers[0].as_secs_f64() * 1e3,
        handovers[handovers.len() / 2].as_secs_f64() * 1e3,
        handovers[handovers.len() - 1].as_secs_f64() * 1e3
    );

    // kill -9 of the leader: its child dies with it; another takes over after the lease.
    let leader = lines(&log).iter().rev().find(|l| l[0] == "start").unwrap()[1].clone();
    let idx = procs.iter().position(|(id, _)| *id == leader).unwrap();
    let (_, mut p) = procs.remove(idx);
    let t0 = Instant::now();
    p.kill().unwrap();
    p.wait().unwrap();
    let at = wait_starts(&log, 12, Duration::from_secs(10)).await;
    let failover = at - t0;
    eprintln!(
        "sidecar crash failover (kill -9 to the next child's start), lease 2 s: {:.0} ms",
        failover.as_secs_f64() * 1e3
    );
    assert!(
        failover >= Duration::from_millis(1000),
        "took over a live lease after {failover:?}"
    );

    // One child at a time, tokens strictly increasing.
    let log_lines = lines(&log);
    let mut running: Option<(String, u64)> = None;
    let mut last_token = None;
    let mut terms = 0;
    for l in &log_lines {
        let (id, token) = (l[1].clone(), l[2].parse::<u64>().unwrap());
        match l[0].as_str() {
            "start" => {
                // A killed leader's child cannot log its stop; a start after it must come from
                // the crash round only.
                if let Some(r) = &running {
                    assert_eq!(
                        r.0, leader,
                        "two children at once: {r:?} and {id}: {log_lines:?}"
                    );
                }
                assert!(
                    last_token.is_none_or(|t| token > t),
                    "token did not increase: {log_lines:?}"
                );
                last_token = Some(token);
                terms += 1;
                running = Some((id, token));
            }
            "stop" => {
                assert_eq!(running.as_ref().map(|r| &r.0), Some(&id), "{log_lines:?}");
                running = None;
            }
            _ => unreachable!(),
        }
    }
    let st = status_json(&kc, &name);
    for key in [
        "holder",
        "acquire_time",
        "renew_time",
        "lease_duration_seconds",
        "transitions",
    ] {
        assert!(!st[key].is_null(), "status --json lacks {key}: {st}");
    }
    // A transition per term after the first, as client-go counts them (the tokens are the
    // terms' revisions); one more if an acquisition's answer came too late to act on.
    assert!(
        st["transitions"].as_u64() >= Some(terms - 1),
        "{terms} terms: {st}"
    );
    for (_, mut p) in procs {
        p.kill().unwrap();
        p.wait().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_rbac_denial_is_reported_naming_verb_and_resource() {
    let server = harness::shared().await;
    let out = Command::new(BIN)
        .args([
            "status",
            "--backend",
            "kube",
            "--namespace",
            "default",
            "--name",
            "x",
            "--kubeconfig",
        ])
        .arg(server.kubeconfig("nobody"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("needs `get` on `leases.coordination.k8s.io`"),
        "{err}"
    );
}

/// Health-gated candidacy on a real Lease: an unhealthy candidate never takes it, and a leader
/// whose probe starts failing releases it to the healthy standby.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unhealthy_leader_hands_the_lease_to_a_healthy_standby() {
    let server = harness::shared().await;
    let kc = server.kubeconfig("admin");
    let name = unique("health");
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let spawn = |id: &str| {
        let probe = format!("test -e {}/healthy-{id}", dir.path().display());
        let child = r#"echo "start $LEASEHOLD_IDENTITY $LEASEHOLD_FENCING_TOKEN" >> "$LOG"; trap 'exit 0' TERM; while true; do sleep 0.05; done"#;
        Command::new(BIN)
            .args(["run", "--backend", "kube", "--namespace", "default"])
            .args(["--name", &name, "--id", id, "--kubeconfig"])
            .arg(&kc)
            .args(["--lease-duration", "2s", "--renew-deadline", "1s"])
            .args(["--retry-period", "250ms", "--health-cmd", &probe])
            .args(["--health-period", "200ms", "--health-failures", "2"])
            .args(["--", "sh", "-c", child])
            .env("LOG", &log)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    std::fs::write(dir.path().join("healthy-a"), "").unwrap();
    let mut a = spawn("a");
    wait_starts(&log, 1, Duration::from_secs(20)).await;
    let mut b = spawn("b");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        status_json(&kc, &name)["holder"],
        "a",
        "b, unhealthy, stands aside"
    );
    std::fs::write(dir.path().join("healthy-b"), "").unwrap();
    tokio::time::sleep(Duration::from_millis(600)).await;
    let t0 = Instant::now();
    std::fs::remove_file(dir.path().join("healthy-a")).unwrap();
    let at = wait_starts(&log, 2, Duration::from_secs(10)).await;
    let starts: Vec<_> = lines(&log)
        .into_iter()
        .filter(|l| l[0] == "start")
        .collect();
    assert_eq!(starts[1][1], "b", "{starts:?}");
    let token = |i: usize| starts[i][2].parse::<u64>().unwrap();
    assert!(token(1) > token(0), "a larger token: {starts:?}");
    eprintln!(
        "kube: probe failing to the healthy standby's command: {:?}",
        at - t0
    );
    assert!(
        at - t0 < Duration::from_secs(2),
        "released, not left to expire"
    );
    for p in [&mut a, &mut b] {
        rustix::process::kill_process(
            rustix::process::Pid::from_raw(p.id() as i32).unwrap(),
            rustix::process::Signal::TERM,
        )
        .unwrap();
        assert_eq!(p.wait().unwrap().code(), Some(0));
    }
}
