//! `deploy/fencing-policy.yaml` on the real kube-apiserver: two candidates, each with the
//! service-account token bound to its own Pod (as a Pod mounts it), elect on a Lease with
//! leasehold; the ValidatingAdmissionPolicy lets only the Lease's holder write the guarded
//! ConfigMaps, and after each handover the deposed candidate's writes are refused by the API
//! server itself. Prints how long after the new leader's acquisition the switch took effect.

use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::{
    Api,
    api::{ObjectMeta, PostParams},
};
use leasehold::{Elector, ElectorHandle, Timing, backend::kubernetes::LeaseLock};
use leasehold_testing::harness::{self, KubeServer, unique};
use std::{collections::BTreeMap, time::Duration};
use tokio::time::{Instant, sleep};

use tokio_util::sync::CancellationToken;

const LEASE: &str = "fenced";

/// The manifest as a user applies it: the placeholders replaced, every document POSTed.
async fn apply_policy(admin: &kube::Client, ns: &str) {
    let path = harness::workspace_root().join("deploy/fencing-policy.yaml");
    let text = std::fs::read_to_string(path)
        .unwrap()
        .replace("my-ns", ns)
        .replace("my-app", LEASE);
    for doc in text.split("\n---\n") {
        let kind = doc
            .lines()
            .find_map(|l| l.strip_prefix("kind: "))
            .unwrap()
            .trim();
        let url = match kind {
            "ValidatingAdmissionPolicy" => {
                "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicies"
            }
            "ValidatingAdmissionPolicyBinding" => {
                "/apis/admissionregistration.k8s.io/v1/validatingadmissionpolicybindings"
            }
            other => panic!("unexpected kind {other}"),
        };
        let req = http::Request::builder()
            .method("POST")
            .uri(url)
            .header("content-type", "application/yaml")
            .body(doc.as_bytes().to_vec())
            .unwrap();
        // The anchor is shared by every copy of the manifest: it may exist already.
        if let Err(e) = admin.request_text(req).await {
            assert!(e.to_string().contains("already exists"), "{kind}: {e}");
        }
    }
}

/// A Pending Pod `name` of the `leasehold` ServiceAccount, and a client with a token bound to it.
async fn pod_client(
    server: &KubeServer,
    admin: &kube::Client,
    ns: &str,
    name: &str,
) -> kube::Client {
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": { "name": name },
        "spec": {
            "serviceAccountName": "leasehold",
            "automountServiceAccountToken": false,
            "containers": [{ "name": "operator", "image": "operator" }],
        },
    }))
    .unwrap();
    let pod = Api::<Pod>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &pod)
        .await
        .unwrap();
    let body = serde_json::json!({
        "apiVersion": "authentication.k8s.io/v1",
        "kind": "TokenRequest",
        "spec": {
            "expirationSeconds": 3600,
            "boundObjectRef": { "apiVersion": "v1", "kind": "Pod", "name": name, "uid": pod.metadata.uid },
        },
    });
    let answer = harness::request_text(
        admin,
        "POST",
        &format!("/api/v1/namespaces/{ns}/serviceaccounts/leasehold/token"),
        "application/json",
        serde_json::to_vec(&body).unwrap(),
    )
    .await;
    let token = serde_json::from_str::<serde_json::Value>(&answer).unwrap()["status"]["token"]
        .as_str()
        .unwrap()
        .to_owned();
    server.write_kubeconfig(&format!("{ns}-{name}"), &token);
    server.client(&format!("{ns}-{name}")).await
}

/// A write of the guarded ConfigMap `state` by `client`: `Ok` if admitted, else the message.
async fn write(client: &kube::Client, ns: &str, value: &str) -> Result<(), String> {
    let api = Api::<ConfigMap>::namespaced(client.clone(), ns);
    let cm = ConfigMap {
        metadata: ObjectMeta {
            name: Some("state".into()),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("value".into(), value.into())])),
        ..ConfigMap::default()
    };
    let result = match api.get_opt("state").await.map_err(|e| e.to_string())? {
        Some(current) => {
            let mut cm = cm;
            cm.metadata.resource_version = current.metadata.resource_version;
            api.replace("state", &PostParams::default(), &cm).await
        }
        None => api.create(&PostParams::default(), &cm).await,
    };
    result.map(drop).map_err(|e| e.to_string())
}

/// Polls `write` until its outcome is `admitted`; returns how long that took, and how many
/// writes.
async fn until(
    client: &kube::Client,
    ns: &str,
    admitted: bool,
    limit: Duration,
) -> (Duration, u32) {
    let start = Instant::now();
    let mut tries = 0;
    loop {
        tries += 1;
        let ok = write(client, ns, "probe").await.is_ok();
        if ok == admitted {
            return (start.elapsed(), tries);
        }
        assert!(
            start.elapsed() < limit,
            "a write was still {} after {limit:?}",
            if admitted { "refused" } else { "admitted" }
        );
        sleep(Duration::from_millis(1)).await;
    }
}

fn candidate(client: &kube::Client, ns: &str, id: &str) -> (ElectorHandle, CancellationToken) {
    let lock = LeaseLock::new(client.clone(), ns, LEASE);
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        ..Timing::default()
    };
    let cancel = CancellationToken::new();
    let (handle, _task) = Elector::new(lock, id, timing)
        .unwrap()
        .spawn(cancel.clone());
    (handle, cancel)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fencing_policy_admits_only_the_lease_holders_pod() {
    let server = harness::shared().await;
    let admin = server.client("admin").await;
    let ns = unique("fence");
    harness::create_namespace(&admin, &ns).await;
    // The ServiceAccount and its rights: deploy/rbac.yaml's Lease rules, plus the guarded
    // ConfigMaps the leader writes.
    let rbac = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata:\n  name: leasehold\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata:\n  name: leasehold\nrules:\n\
         - apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [get, create, update, watch]\n\
         - apiGroups: [\"\"]\n  resources: [configmaps]\n  verbs: [get, create, update, delete]\n---\n\
         apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata:\n  name: leasehold\n\
         roleRef:\n  apiGroup: rbac.authorization.k8s.io\n  kind: Role\n  name: leasehold\n\
         subjects:\n- kind: ServiceAccount\n  name: leasehold\n  namespace: {ns}\n"
    );
    for (doc, url) in rbac.split("\n---\n").zip([
        format!("/api/v1/namespaces/{ns}/serviceaccounts"),
        format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/roles"),
        format!("/apis/rbac.authorization.k8s.io/v1/namespaces/{ns}/rolebindings"),
    ]) {
        harness::request_text(
            &admin,
            "POST",
            &url,
            "application/yaml",
            doc.as_bytes().to_vec(),
        )
        .await;
    }
    let p1 = pod_client(server, &admin, &ns, "p1").await;
    let p2 = pod_client(server, &admin, &ns, "p2").await;

    // p1 leads; then the policy is applied, and takes effect within a second or so.
    let (h1, c1) = candidate(&p1, &ns, "p1");
    h1.acquired().await.expect("p1 leads");
    let (h2, c2) = candidate(&p2, &ns, "p2");
    apply_policy(&admin, &ns).await;
    let (active, _) = until(&p2, &ns, false, Duration::from_secs(10)).await;
    println!("the policy refused the standby's writes {active:?} after it was applied");
    write(&p1, &ns, "p1").await.expect("the holder writes");
    let denied = write(&p2, &ns, "p2").await.unwrap_err();
    println!("the standby's write: {denied}");
    assert!(
        denied.contains("Pod p2 is not its holder (holder: p1)"),
        "{denied}"
    );
    write(&admin, &ns, "admin")
        .await
        .expect("people are not fenced");

    // Handovers both ways: the old holder releases, the other acquires; right after the
    // acquisition, how long until the deposed Pod is refused, then the new holder admitted.
    let mut deposed_refused = Vec::new();
    let mut holder_admitted = Vec::new();
    let (mut old, mut new) = ((h1, c1, p1, "p1"), (h2, c2, p2, "p2"));
    for _ in 0..6 {
        old.1.cancel();
        let term = new.0.acquired().await.expect("the other leads");
        assert_eq!(term.identity(), new.3);
        // Each probe is a read and a compare-and-swap write, a few milliseconds.
        deposed_refused.push(until(&old.2, &ns, false, Duration::from_secs(5)).await);
        holder_admitted.push(until(&new.2, &ns, true, Duration::from_secs(5)).await);
        // The deposed candidate stands again, as a standby.
        let (h, c) = candidate(&old.2, &ns, old.3);
        old.0 = h;
        old.1 = c;
        std::mem::swap(&mut old, &mut new);
    }
    let first = |v: &[(Duration, u32)]| v.iter().filter(|t| t.1 == 1).count();
    println!(
        "the deposed Pod's first write after the acquisition refused in {} of {}; the new holder's first admitted in {} of {}",
        first(&deposed_refused),
        deposed_refused.len(),
        first(&holder_admitted),
        holder_admitted.len()
    );
    deposed_refused.sort();
    holder_admitted.sort();
    println!(
        "{} handovers; from the new holder's acquisition, the deposed Pod's writes refused after {:?} (median; max {:?}), then the holder's admitted after {:?} (median; max {:?})",
        deposed_refused.len(),
        deposed_refused[deposed_refused.len() / 2].0,
        deposed_refused.last().unwrap().0,
        holder_admitted[holder_admitted.len() / 2].0,
        holder_admitted.last().unwrap().0,
    );
    old.1.cancel();
    new.1.cancel();
}
