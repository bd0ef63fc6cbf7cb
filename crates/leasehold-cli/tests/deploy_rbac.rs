//! `deploy/rbac.yaml` on the real kube-apiserver: applied as written, leasehold runs with the
//! ServiceAccount's token (lease, Events, Pod label all work); with any one verb removed, the
//! log names exactly what is missing.

use k8s_openapi::api::{
    core::v1::{Event, Pod},
    rbac::v1::Role,
};
use kube::api::{Api, ListParams, PostParams};
use leasehold_testing::harness::{self, unique};
use std::{
    path::Path,
    process::{Child, Command, Stdio},
    time::Duration,
};
use tokio::time::{Instant, sleep};

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Applies every document of a multi-document YAML file into `ns`, as the API server parses it.
async fn apply_yaml(client: &kube::Client, ns: &str, path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut kinds = Vec::new();
    for doc in text.split("\n---\n") {
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap_or_else(|| panic!("no kind in {doc}"))
            .trim();
        let url = match kind {
            "ServiceAccount" => format!("/api/v1/namespaces/{ns}/serviceaccounts"),
            "Role" => format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
            "RoleBinding" => {
                format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings")
            }
            other => panic!("unexpected kind {other}"),
        };
        harness::request_text(
            client,
            "POST",
            &url,
            "application/yaml",
            doc.as_bytes().to_vec(),
        )
        .await;
        kinds.push(kind.to_owned());
    }
    kinds
}

fn run(kubeconfig: &Path, ns: &str, name: &str, pod: &str, log: &Path) -> Proc {
    Proc(
        Command::new(BIN)
            .args([
                "run",
                "--namespace",
                ns,
                "--name",
                name,
                "--id",
                "rbac-a",
                "--pod-name",
                pod,
                "--route-service",
                "app",
                "--pod-ip",
                "10.1.0.1",
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
            ])
            .env("LEASEHOLD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(log).unwrap())
            .spawn()
            .unwrap(),
    )
}

async fn wait_log(log: &Path, needle: &str, limit: Duration) -> String {
    let t0 = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(line) = text.lines().find(|l| l.contains(needle)) {
            return line.to_owned();
        }
        assert!(
            t0.elapsed() < limit,
            "`{needle}` not logged within {limit:?}:\n{text}"
        );
        sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deploy_rbac_is_sufficient_and_every_verb_is_needed() {
    let server = harness::shared().await;
    let admin = server.client("admin").await;
    let ns = unique("rbac");
    harness::create_namespace(&admin, &ns).await;
    let kinds = apply_yaml(
        &admin,
        &ns,
        &harness::workspace_root().join("deploy/rbac.yaml"),
    )
    .await;
    assert_eq!(kinds, ["ServiceAccount", "Role", "RoleBinding"]);

    // The ServiceAccount's own token (TokenRequest), as a Pod would mount it.
    let tr = harness::request_text(
        &admin,
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/leasehold/token"),
        "application/json",
        br#"{"apiVersion":"authentication.k8s.io/v1","kind":"TokenRequest","spec":{"expirationSeconds":3600}}"#.to_vec(),
    )
    .await;
    let token = serde_json::from_str::<serde_json::Value>(&tr).unwrap()["status"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let kc = server.write_kubeconfig(&format!("sa-{ns}"), &token);
    let pods: Api<Pod> = Api::namespaced(admin.clone(), &ns);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "app-0" },
        "spec": { "serviceAccountName": "leasehold", "containers": [{ "name": "app", "image": "registry.example/app:1" }] }
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    // The selector-less Service `--route-service app` points at the leader.
    let services: Api<k8s_openapi::api::core::v1::Service> = Api::namespaced(admin.clone(), &ns);
    let service = serde_json::from_value(serde_json::json!({
        "metadata": { "name": "app" },
        "spec": { "ports": [{ "port": 80, "targetPort": 8080 }] }
    }))
    .unwrap();
    services
        .create(&PostParams::default(), &service)
        .await
        .unwrap();
    let slices: Api<k8s_openapi::api::discovery::v1::EndpointSlice> =
        Api::namespaced(admin.clone(), &ns);
    let dir = tempfile::tempdir().unwrap();

    // 1. As written: leads, labels the Pod, records the Event; no permission error.
    let log = dir.path().join("ok.log");
    let name = "app-ok";
    let mut p = run(&kc, &ns, name, "app-0", &log);
    wait_log(&log, "started leading", Duration::from_secs(15)).await;
    wait_log(&log, "k8s-elector/status=leader", Duration::from_secs(10)).await;
    wait_log(
        &log,
        "routed the Service to this leader",
        Duration::from_secs(10),
    )
    .await;
    let events: Api<Event> = Api::namespaced(admin.clone(), &ns);
    let t0 = Instant::now();
    while events
        .list(&ListParams::default().fields(&format!("involvedObject.name={name}")))
        .await
        .unwrap()
        .items
        .is_empty()
    {
        assert!(t0.elapsed() < Duration::from_secs(10), "no Event recorded");
        sleep(Duration::from_millis(50)).await;
    }
    let _ = rustix::process::kill_process(
        rustix::process::Pid::from_raw(p.0.id() as i32).unwrap(),
        rustix::process::Signal::TERM,
    );
    assert!(p.0.wait().unwrap().success());
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(!text.contains("forbidden"), "{text}");
    eprintln!("deploy/rbac.yaml as written: leads, labels the Pod, records Events, no denial");

    // 2. Remove one verb at a time: the log names it.
    let roles: Api<Role> = Api::namespaced(admin.clone(), &ns);
    let original = roles.get("leasehold").await.unwrap();
    let cases: [(&str, &str, &str, bool); 10] = [
        // (resource, verb, expected log text, whether it still leads)
        (
            "leases",
            "get",
            "needs `get` on `leases.coordination.k8s.io`",
            false,
        ),
        (
            "leases",
            "create",
            "needs `create` on `leases.coordination.k8s.io`",
            false,
        ),
        (
            "leases",
            "update",
            "needs `update` on `leases.coordination.k8s.io`",
            false,
        ),
        (
            "leases",
            "watch",
            "needs `watch` on `leases.coordination.k8s.io`",
            false,
        ),
        ("events", "create", "needs `create` on `events`", true),
        ("pods", "patch", "needs `patch` on `pods`", true),
        // Routing: the Service is read at start (no route, no run); the slice is created when
        // absent, read after a conflict on create, updated when present.
        ("services", "get", "cannot get resource \"services\"", false),
        (
            "endpointslices",
            "create",
            "cannot create resource \"endpointslices\"",
            true,
        ),
        (
            "endpointslices",
            "get",
            "cannot get resource \"endpointslices\"",
            true,
        ),
        (
            "endpointslices",
            "update",
            "cannot update resource \"endpointslices\"",
            true,
        ),
    ];
    for (i, (resource, verb, needle, leads)) in cases.into_iter().enumerate() {
        let mut role = roles.get("leasehold").await.unwrap();
        if let Some(rules) = role.rules.as_mut() {
            for rule in rules.iter_mut() {
                if rule
                    .resources
                    .as_ref()
                    .is_some_and(|r| r.iter().any(|x| x == resource))
                {
                    rule.verbs.retain(|v| v != verb);
                }
            }
            // A rule left with no verb is not valid: drop it.
            rules.retain(|r| !r.verbs.is_empty());
        }
        roles
            .replace("leasehold", &PostParams::default(), &role)
            .await
            .unwrap();
        let name = format!("app-{i}");
        if verb == "update" || verb == "watch" {
            // `update`: the Lease exists (released), so acquiring it needs `update`.
            // `watch`: another holder has it for 30 s, so this candidate stands by, which is
            // when it watches (a leader holds no watch).
            let admin_lock =
                leasehold::backend::kubernetes::LeaseLock::new(admin.clone(), &ns, &name);
            use leasehold::LockBackend as _;
            let now = jiff::Timestamp::now();
            let record = if verb == "watch" {
                leasehold::LeaderRecord::new("someone-else", 30)
                    .with_acquire_time(Some(now))
                    .with_renew_time(Some(now))
                    .with_leader_transitions(0)
            } else {
                leasehold::LeaderRecord::new("", 1)
            };
            admin_lock.create(&record).await.unwrap();
        }
        if resource == "endpointslices" {
            // `create` needs the slice absent; `get` (after a create refused as a conflict)
            // and `update` need it present, as an earlier term left it.
            let _ = slices.delete("app-leader", &Default::default()).await;
            if verb != "create" {
                let slice = serde_json::from_value(serde_json::json!({
                    "metadata": {
                        "name": "app-leader",
                        "labels": { "kubernetes.io/service-name": "app" },
                        "annotations": { "leasehold.dev/fencing-token": "0" }
                    },
                    "addressType": "IPv4",
                    "endpoints": [{ "addresses": ["10.1.0.9"] }],
                    "ports": [{ "port": 8080 }]
                }))
                .unwrap();
                slices.create(&PostParams::default(), &slice).await.unwrap();
            }
        }
        sleep(Duration::from_millis(300)).await;
        let log = dir.path().join(format!("{resource}-{verb}.log"));
        let p = run(&kc, &ns, &name, "app-0", &log);
        let line = wait_log(&log, needle, Duration::from_secs(15)).await;
        let text = std::fs::read_to_string(&log).unwrap();
        if leads {
            wait_log(&log, "started leading", Duration::from_secs(10)).await;
        } else {
            assert!(
                !text.contains("started leading"),
                "{resource} {verb}: led without permission"
            );
        }
        eprintln!(
            "without `{verb}` on {resource}: {}",
            line.split("error=").nth(1).unwrap_or(&line)
        );
        drop(p);
        // Restore.
        let mut restored = original.clone();
        restored.metadata.resource_version = roles
            .get("leasehold")
            .await
            .unwrap()
            .metadata
            .resource_version;
        roles
            .replace("leasehold", &PostParams::default(), &restored)
            .await
            .unwrap();
    }
}
