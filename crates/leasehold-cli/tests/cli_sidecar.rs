//! The sidecar's HTTP endpoints, Pod role labels and lock types, as processes against a real
//! kube-apiserver + etcd.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Api, ListParams, PostParams};
use leasehold_testing::harness::{self, free_port, unique};
use std::{
    io::{Read as _, Write as _},
    net::TcpStream,
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::time::{Instant, sleep};

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// A child process killed when dropped, so a failing test leaves nothing running.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    fn term(&self) {
        let pid = rustix::process::Pid::from_raw(self.0.id() as i32).unwrap();
        let _ = rustix::process::kill_process(pid, rustix::process::Signal::TERM);
    }

    fn wait(&mut self) -> std::process::ExitStatus {
        self.0.wait().unwrap()
    }
}

/// A command-less sidecar (election + HTTP only), as the k8s-elector sidecar's.
fn sidecar(kubeconfig: &Path, name: &str, id: &str, port: u16, extra: &[&str]) -> Proc {
    Proc(
        Command::new(BIN)
            .args(["run", "--namespace", "default", "--name", name, "--id", id])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--lease-duration",
                "2s",
                "--renew-deadline",
                "1s",
                "--retry-period",
                "250ms",
            ])
            .args(["--http", &format!("127.0.0.1:{port}")])
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `GET path` on 127.0.0.1:port: (status code, body), or None if nothing listens yet.
fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let code = resp.split_whitespace().nth(1)?.parse().ok()?;
    let body = resp.split_once("\r\n\r\n")?.1.to_owned();
    Some((code, body))
}

fn json(port: u16) -> serde_json::Value {
    get(port, "/")
        .and_then(|(_, b)| serde_json::from_str(&b).ok())
        .unwrap_or(serde_json::Value::Null)
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(t0.elapsed() < limit, "timed out waiting for {what}");
        sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_status_health_ready_and_metrics_follow_the_lock() {
    let server = harness::shared().await;
    let kc = server.kubeconfig("admin");
    let name = unique("http");
    let (pa, pb) = (free_port(), free_port());
    // On a ConfigMap lock, to prove --lock-type end to end as well.
    let extra = ["--lock-type", "configmaps", "--ready-when", "leader"];
    let mut a = sidecar(&kc, &name, "side-a", pa, &extra);
    until("a leads", Duration::from_secs(15), || {
        json(pa)["is_leader"] == true
    })
    .await;
    let mut b = sidecar(&kc, &name, "side-b", pb, &extra);
    until("b observes", Duration::from_secs(15), || {
        json(pb)["leader"] == "side-a"
    })
    .await;

    let ja = json(pa);
    let jb = json(pb);
    eprintln!("GET / on the leader: {ja}\nGET / on the standby: {jb}");
    assert_eq!(ja["name"], "side-a");
    assert_eq!(ja["node"], "side-a");
    let first = ja["fencing_token"].as_u64().expect("the leader's token");
    assert_eq!(ja["lease"]["name"], name.as_str());
    assert_eq!(ja["lease"]["namespace"], "default");
    assert!(ja["lease"]["renew_time"].is_string());
    assert!(ja["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(jb["name"], "side-a");
    assert_eq!(jb["is_leader"], false);
    assert_eq!(jb["node"], "side-b");
    assert!(jb["fencing_token"].is_null());

    assert_eq!(get(pa, "/healthz").unwrap().0, 200);
    assert_eq!(get(pb, "/healthz").unwrap().0, 200, "a standby is healthy");
    assert_eq!(get(pa, "/readyz").unwrap().0, 200);
    assert_eq!(get(pb, "/readyz").unwrap().0, 503, "--ready-when leader");
    assert_eq!(get(pa, "/nope").unwrap().0, 404);
    let (_, ma) = get(pa, "/metrics").unwrap();
    let (_, mb) = get(pb, "/metrics").unwrap();
    let series = format!("leader_election_master_status{{name=\"{name}\"}}");
    assert!(ma.contains(&format!("{series} 1")), "{ma}");
    assert!(mb.contains(&format!("{series} 0")), "{mb}");
    assert!(
        ma.contains("leasehold_renew_duration_seconds_count"),
        "{ma}"
    );

    // The lock is a ConfigMap with client-go's annotation.
    let cms: Api<ConfigMap> = Api::namespaced(server.client("admin").await, "default");
    let cm = cms.get(&name).await.unwrap();
    let ann = &cm.metadata.annotations.unwrap()["control-plane.alpha.kubernetes.io/leader"];
    assert!(ann.contains(r#""holderIdentity":"side-a""#), "{ann}");

    // Handover: the standby's status flips as soon as it leads.
    let t0 = Instant::now();
    a.term();
    until("b leads", Duration::from_secs(10), || {
        json(pb)["is_leader"] == true
    })
    .await;
    eprintln!(
        "sidecar handover seen on b's GET /: {:.1} ms",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(get(pb, "/readyz").unwrap().0, 200);
    let second = json(pb)["fencing_token"]
        .as_u64()
        .expect("the new leader's token");
    assert!(second > first, "{first} -> {second}");
    assert!(a.wait().success());
    b.term();
    assert!(b.wait().success());
}

async fn create_pod(client: &kube::Client, name: &str, app: &str) {
    harness::ensure_default_service_account(client, "default").await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name, "labels": { "app": app } },
        "spec": { "containers": [{ "name": "app", "image": "registry.example/app:1" }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_labels_follow_leadership_and_select_one_pod_at_a_time() {
    let server = harness::shared().await;
    let kc = server.kubeconfig("admin");
    let client = server.client("admin").await;
    let app = unique("labels");
    let (pod_a, pod_b) = (format!("{app}-a"), format!("{app}-b"));
    create_pod(&client, &pod_a, &app).await;
    create_pod(&client, &pod_b, &app).await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    // The selector a Service `{app, k8s-elector/status: leader}` uses, evaluated by the API
    // server itself.
    let leader_sel = ListParams::default().labels(&format!("app={app},k8s-elector/status=leader"));
    let selected = || {
        let pods = pods.clone();
        let lp = leader_sel.clone();
        async move {
            pods.list(&lp)
                .await
                .unwrap()
                .items
                .into_iter()
                .filter_map(|p| p.metadata.name)
                .collect::<Vec<_>>()
        }
    };

    let (pa, pb) = (free_port(), free_port());
    let mut a = sidecar(&kc, &app, "lab-a", pa, &["--pod-name", &pod_a]);
    let t0 = Instant::now();
    loop {
        if selected().await == vec![pod_a.clone()] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "a never labelled leader"
        );
        sleep(Duration::from_millis(20)).await;
    }
    let mut b = sidecar(&kc, &app, "lab-b", pb, &["--pod-name", &pod_b]);
    let t0 = Instant::now();
    loop {
        let p = pods.get(&pod_b).await.unwrap();
        if p.metadata
            .labels
            .unwrap_or_default()
            .get("k8s-elector/status")
            .map(String::as_str)
            == Some("standby")
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "b never labelled standby"
        );
        sleep(Duration::from_millis(20)).await;
    }

    // Graceful handover: poll the selector throughout; never two Pods.
    a.term();
    let t0 = Instant::now();
    let mut samples = 0;
    let mut max_selected = 0;
    loop {
        let s = selected().await;
        samples += 1;
        max_selected = max_selected.max(s.len());
        assert!(s.len() <= 1, "the leader selector matched two Pods: {s:?}");
        if s == vec![pod_b.clone()] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(15),
            "b never labelled leader"
        );
    }
    eprintln!(
        "pod labels: handover to {pod_b} seen by the selector after {:.0} ms; {samples} samples, never more than {max_selected} Pod selected",
        t0.elapsed().as_secs_f64() * 1e3
    );
    assert!(a.wait().success());
    let la = pods.get(&pod_a).await.unwrap().metadata.labels.unwrap();
    assert_eq!(
        la["k8s-elector/status"], "standby",
        "set to standby on exit"
    );
    b.term();
    assert!(b.wait().success());
    let lb = pods.get(&pod_b).await.unwrap().metadata.labels.unwrap();
    assert_eq!(lb["k8s-elector/status"], "standby");
    assert_eq!(lb["app"], app.as_str(), "other labels kept");
}

/// One simulated rolling update of `n` replicas, as the Deployment and ReplicaSet controllers
/// run it (maxSurge 1, maxUnavailable 0): a Pod of the new revision is added, then one old Pod
/// is removed, chosen as the ReplicaSet controller ranks Pods for deletion when all are alike
/// otherwise: lower `controller.kubernetes.io/pod-deletion-cost` first, then the newer Pod
/// first. The leader starts on the newest old Pod. Returns the holders in order, one entry per
/// change of holder (empty holders, released leases, left out).
/// Returns the holders as they changed, and how many old Pods were still running when the
/// first change was seen.
async fn rollout(n: usize, extra: &[&str]) -> (Vec<String>, Option<usize>) {
    let server = harness::shared().await;
    let kc = server.kubeconfig("admin");
    let client = server.client("admin").await;
    let app = unique("roll");
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let leases: Api<k8s_openapi::api::coordination::v1::Lease> =
        Api::namespaced(client.clone(), "default");
    let start = |pod: &str| {
        let mut args = vec!["--pod-name", pod];
        args.extend_from_slice(extra);
        sidecar(&kc, &app, pod, free_port(), &args)
    };
    // Old Pods, oldest first; the newest one's sidecar starts first, so it leads.
    let mut old: Vec<(String, Proc)> = Vec::new();
    let names: Vec<String> = (0..n).map(|i| format!("{app}-old-{i}")).collect();
    for name in &names {
        create_pod(&client, name, &app).await;
    }
    old.push((names[n - 1].clone(), start(&names[n - 1])));
    let holder = {
        let (leases, app) = (leases.clone(), app.clone());
        move || {
            let leases = leases.clone();
            let app = app.clone();
            async move {
                leases
                    .get_opt(&app)
                    .await
                    .ok()
                    .flatten()
                    .and_then(|l| l.spec?.holder_identity)
                    .unwrap_or_default()
            }
        }
    };
    let t0 = Instant::now();
    while holder().await != names[n - 1] {
        assert!(t0.elapsed() < Duration::from_secs(20), "no first leader");
        sleep(Duration::from_millis(20)).await;
    }
    for name in names.iter().take(n - 1) {
        old.insert(old.len() - 1, (name.clone(), start(name)));
    }
    // The holders as they change, sampled every 10 ms in the background, and the old Pods
    // still running at the first change.
    let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![names[n - 1].clone()]));
    let old_left = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(n));
    let first_move = std::sync::Arc::new(std::sync::Mutex::new(None));
    let sampler = {
        let (seen, old_left, first_move) = (seen.clone(), old_left.clone(), first_move.clone());
        let holder = holder.clone();
        tokio::spawn(async move {
            loop {
                let h = holder().await;
                {
                    let mut s = seen.lock().unwrap();
                    if !h.is_empty() && s.last() != Some(&h) {
                        s.push(h);
                        first_move
                            .lock()
                            .unwrap()
                            .get_or_insert(old_left.load(std::sync::atomic::Ordering::SeqCst));
                    }
                }
                sleep(Duration::from_millis(10)).await;
            }
        })
    };
    sleep(Duration::from_millis(1500)).await; // labels and costs applied
    let mut new: Vec<Proc> = Vec::new();
    for i in 0..n {
        let name = format!("{app}-new-{i}");
        create_pod(&client, &name, &app).await;
        new.push(start(&name));
        sleep(Duration::from_millis(700)).await; // the new Pod's sidecar is up and watching
        // The ReplicaSet controller's choice among the old Pods left.
        let names: Vec<&str> = old.iter().map(|(n, _)| n.as_str()).collect();
        let idx = harness::next_pod_to_delete(&client, "default", &names).await;
        let (name, mut proc) = old.remove(idx);
        old_left.store(old.len(), std::sync::atomic::Ordering::SeqCst);
        proc.term();
        assert!(proc.wait().success(), "{name} exits 0 on SIGTERM");
        pods.delete(&name, &Default::default()).await.unwrap();
    }
    sleep(Duration::from_millis(1500)).await;
    sampler.abort();
    for p in &new {
        p.term();
    }
    for mut p in new {
        p.wait();
    }
    let holders = seen.lock().unwrap().clone();
    let first = *first_move.lock().unwrap();
    (holders, first)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rolling_update_moves_leadership_once_to_a_pod_of_the_new_revision() {
    let (holders, first) = rollout(5, &[]).await;
    eprintln!("with the deletion cost: {holders:?}, first move with {first:?} old Pods left");
    assert_eq!(holders.len(), 2, "one move per rollout: {holders:?}");
    assert!(holders[1].contains("-new-"), "{holders:?}");
    // The leader's Pod is the last old one deleted.
    assert_eq!(first, Some(0), "{holders:?}");
    // The contrast: without the cost the ReplicaSet deletes the leader's Pod (the newest) first,
    // while the other old Pods still run. Whoever takes over is then a race among the standbys:
    // an old Pod (deleted later: another move) or the first new one.
    let (holders, first) = rollout(5, &["--no-deletion-cost"]).await;
    eprintln!(
        "without it: {} moves: {holders:?}, first move with {first:?} old Pods left",
        holders.len() - 1
    );
    assert_eq!(first, Some(4), "the contrast: {holders:?}");
}

/// `--route-service`: each new leader points the selector-less Service at itself. A leader cut
/// off from the API server (its connection stalled) keeps its Pod label, but drops out of the
/// Service's endpoints as soon as the next leader takes over; never two endpoints at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_leader_drops_out_of_the_route_without_its_cooperation() {
    use k8s_openapi::api::discovery::v1::EndpointSlice;
    use leasehold_testing::proxy::{Mode, Proxy};
    let server = harness::shared().await;
    let client = server.client("admin").await;
    let svc = unique("route");
    let services: Api<k8s_openapi::api::core::v1::Service> =
        Api::namespaced(client.clone(), "default");
    let service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": svc },
        "spec": { "ports": [{ "name": "http", "port": 80, "targetPort": 8080 }] }
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let addresses = || {
        let slices = slices.clone();
        let svc = svc.clone();
        async move {
            let list = slices
                .list(&ListParams::default().labels(&format!("kubernetes.io/service-name={svc}")))
                .await
                .unwrap();
            list.items
                .iter()
                .flat_map(|s| s.endpoints.iter().flatten())
                .flat_map(|e| e.addresses.clone())
                .collect::<Vec<_>>()
        }
    };
    let proxy_a = Proxy::start(server.port()).await;
    let kc_a = server.write_kubeconfig_for(&format!("{svc}-a"), harness::ADMIN_TOKEN, proxy_a.port);
    let kc = server.kubeconfig("admin");
    let route = ["--route-service", svc.as_str(), "--pod-ip"];
    let mut a = sidecar(
        &kc_a,
        &svc,
        "route-a",
        free_port(),
        &[&route[..], &["10.0.0.1"]].concat(),
    );
    until_async(Duration::from_secs(20), || {
        let addresses = addresses();
        async move { addresses.await == ["10.0.0.1"] }
    })
    .await;
    let token_of_route = async || -> u64 {
        let slice = slices.get(&format!("{svc}-leader")).await.unwrap();
        slice.metadata.annotations.unwrap()["leasehold.dev/fencing-token"]
            .parse()
            .unwrap()
    };
    let first = token_of_route().await;
    let mut b = sidecar(
        &kc,
        &svc,
        "route-b",
        free_port(),
        &[&route[..], &["10.0.0.2"]].concat(),
    );
    sleep(Duration::from_millis(800)).await;
    assert_eq!(addresses().await, ["10.0.0.1"], "a standby never writes");

    // a's API connection stalls: it cannot write, not even to step out. b takes over after the
    // lease (2 s) and writes the route itself.
    proxy_a.set(Mode::Stall);
    let t0 = Instant::now();
    let mut most = 0;
    loop {
        let now = addresses().await;
        most = most.max(now.len());
        if now == ["10.0.0.2"] {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no new route: {now:?}"
        );
        sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "route moved to the new leader {:?} after the stall began",
        t0.elapsed()
    );
    // a comes back: its late writes are fenced, and it finds itself deposed.
    proxy_a.set(Mode::Normal);
    sleep(Duration::from_secs(2)).await;
    let now = addresses().await;
    most = most.max(now.len());
    assert_eq!(now, ["10.0.0.2"]);
    assert_eq!(most, 1, "never two endpoints at once");
    let token = token_of_route().await;
    assert!(
        token > first,
        "written by the second term: {first} -> {token}"
    );
    a.term();
    b.term();
    assert!(a.wait().success());
    assert!(b.wait().success());

    // Bad input: a Service with a selector is refused at start, naming the problem.
    let with_selector = unique("routesel");
    let service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": with_selector },
        "spec": { "selector": { "app": "x" }, "ports": [{ "port": 80 }] }
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let out = Command::new(BIN)
        .args(["run", "--namespace", "default", "--name", &with_selector])
        .arg("--kubeconfig")
        .arg(&kc)
        .args(["--route-service", &with_selector, "--pod-ip", "10.0.0.3"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("has a selector"), "{err}");
}

async fn until_async<F, Fut>(limit: Duration, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while !f().await {
        assert!(t0.elapsed() < limit, "not within {limit:?}");
        sleep(Duration::from_millis(20)).await;
    }
}
