//! Three replicas of the example operator on the real API server, each through its own TCP
//! proxy, while sources keep changing. The leader is taken out four ways: SIGTERM, SIGKILL,
//! SIGSTOP of the whole process (resumed after its successor has written), and its API
//! connection stalled (released after its successor has written, so that whatever it had in
//! flight arrives late). A watch records every write of a derived object; the checker asserts
//! that every write carries a fencing token, that no write of an earlier term landed after a
//! later term's first write, and that every source converges.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt as _,
    api::{ObjectMeta, PostParams},
    runtime::{WatchStreamExt as _, watcher},
};
use leasehold_testing::{
    harness::{self, KubeServer, Proc, unique},
    proxy::{Mode, Proxy},
};
use rustix::process::Signal;
use std::{
    collections::{BTreeMap, HashMap},
    path::PathBuf,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep};

const SOURCES: usize = 30;
const SOURCE_LABEL: &str = "example.leasehold.dev/source";
const DERIVED_LABEL: &str = "example.leasehold.dev/derived-from";
const SOURCE_VERSION: &str = "example.leasehold.dev/source-version";
const WRITTEN_BY: &str = "example.leasehold.dev/written-by";
const TOKEN: &str = "leasehold.dev/fencing-token";
const BAD: &str = "unparsable";

/// One replica: the process, its proxy, and the event lines it has printed.
struct Replica {
    id: String,
    proc: Proc,
    proxy: Proxy,
    log: PathBuf,
    seen: usize,
    events: Vec<(Instant, String)>,
}

impl Replica {
    async fn start(server: &KubeServer, ns: &str, id: &str) -> Self {
        let proxy = Proxy::start(server.port()).await;
        let kubeconfig =
            server.write_kubeconfig_for(&format!("op-{id}"), harness::ADMIN_TOKEN, proxy.port);
        let log = server.dir().join(format!("{ns}-{id}.log"));
        let args: Vec<String> = [
            "--kubeconfig",
            &kubeconfig.display().to_string(),
            "--namespace",
            ns,
            "--lease",
            "example-operator",
            "--id",
            id,
            "--lease-duration",
            "3",
            "--renew-deadline",
            "2",
            "--retry-period",
            "0.5",
        ]
        .map(str::to_owned)
        .to_vec();
        let proc = Proc::spawn(
            id,
            std::path::Path::new(env!("CARGO_BIN_EXE_example-operator")),
            &args,
            &log,
        );
        Self {
            id: id.to_owned(),
            proc,
            proxy,
            log,
            seen: 0,
            events: Vec::new(),
        }
    }

    /// Picks up the event lines printed since the last call.
    fn poll(&mut self) {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let now = Instant::now();
        let lines: Vec<&str> = text.lines().collect();
        for line in lines.iter().skip(self.seen) {
            if ["elected ", "first-reconcile ", "stopped "]
                .iter()
                .any(|p| line.starts_with(p))
            {
                self.events.push((now, (*line).to_owned()));
            }
        }
        self.seen = lines.len();
    }

    /// The token of its latest term, if it was elected.
    fn token(&self) -> Option<u64> {
        self.events
            .iter()
            .rev()
            .find_map(|(_, l)| l.strip_prefix("elected ")?.split(' ').nth(1)?.parse().ok())
    }

    /// When it first reconciled after `since` in a term with a token of at least `min`.
    fn first_reconcile_after(&self, since: Instant, min: u64) -> Option<Instant> {
        let elected = self.events.iter().position(|(_, l)| {
            l.strip_prefix("elected ")
                .and_then(|r| r.split(' ').nth(1)?.parse::<u64>().ok())
                .is_some_and(|t| t >= min)
        })?;
        self.events[elected..]
            .iter()
            .find(|(at, l)| *at >= since && l.starts_with("first-reconcile "))
            .map(|(at, _)| *at)
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// One write of a derived object, as the watch saw it.
#[derive(Clone, Debug)]
struct Write {
    version: u64,
    name: String,
    token: Option<u64>,
    by: String,
}

/// Records every write of a derived object from now on.
fn record_writes(api: Api<ConfigMap>) -> Arc<Mutex<BTreeMap<(String, u64), Write>>> {
    let writes = Arc::new(Mutex::new(BTreeMap::new()));
    let w = Arc::clone(&writes);
    tokio::spawn(async move {
        use futures_util::StreamExt as _;
        let config = watcher::Config::default().labels(DERIVED_LABEL);
        let mut stream = std::pin::pin!(watcher(api, config).default_backoff().touched_objects());
        while let Some(event) = stream.next().await {
            let Ok(cm) = event else { continue };
            let write = Write {
                version: cm
                    .resource_version()
                    .and_then(|v| v.parse().ok())
                    .unwrap_or(0),
                name: cm.name_any(),
                token: cm.annotations().get(TOKEN).and_then(|t| t.parse().ok()),
                by: cm
                    .annotations()
                    .get(WRITTEN_BY)
                    .cloned()
                    .unwrap_or_default(),
            };
            w.lock()
                .unwrap()
                .insert((write.name.clone(), write.version), write);
        }
    });
    writes
}

fn source(name: &str, n: u64) -> ConfigMap {
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([(SOURCE_LABEL.into(), "true".into())])),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([("n".into(), n.to_string())])),
        ..ConfigMap::default()
    }
}

/// Sources whose derived object is missing or stale.
async fn unconverged(api: &Api<ConfigMap>) -> Vec<String> {
    let lp = |l: &str| kube::api::ListParams::default().labels(l);
    let sources = api.list(&lp(SOURCE_LABEL)).await.unwrap().items;
    let derived: HashMap<String, ConfigMap> = api
        .list(&lp(DERIVED_LABEL))
        .await
        .unwrap()
        .items
        .into_iter()
        .map(|d| (d.name_any(), d))
        .collect();
    sources
        .iter()
        .filter(|s| s.name_any() != BAD)
        .filter(|s| {
            let Some(d) = derived.get(&format!("{}-derived", s.name_any())) else {
                return true;
            };
            d.annotations().get(SOURCE_VERSION) != s.resource_version().as_ref()
                || d.data.as_ref().and_then(|d| d.get("derived-n"))
                    != s.data.as_ref().and_then(|d| d.get("n"))
        })
        .map(|s| s.name_any())
        .collect()
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    Sigterm,
    Sigkill,
    Sigstop,
    Stall,
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_replicas_lose_their_leader_four_ways_and_no_stale_write_lands() {
    let server = harness::shared().await;
    let admin = server.client("admin").await;
    let ns = unique("operator");
    harness::create_namespace(&admin, &ns).await;
    let api = Api::<ConfigMap>::namespaced(admin.clone(), &ns);
    for i in 0..SOURCES {
        api.create(&PostParams::default(), &source(&format!("s{i}"), 0))
            .await
            .unwrap();
    }
    let mut bad = source(BAD, 0);
    bad.annotations_mut()
        .insert("example.leasehold.dev/transform".into(), "rot13".into());
    api.create(&PostParams::default(), &bad).await.unwrap();
    let writes = record_writes(api.clone());

    let mut replicas = Vec::new();
    for i in 0..3 {
        replicas.push(Replica::start(server, &ns, &format!("r{i}")).await);
    }
    // Sources keep changing, so the leader is reconciling whenever it is taken out.
    let changer = {
        let api = api.clone();
        tokio::spawn(async move {
            for n in 1u64.. {
                let name = format!("s{}", n as usize % SOURCES);
                let mut cm = api.get(&name).await.unwrap();
                cm.data = source(&name, n).data;
                let _ = api.replace(&name, &PostParams::default(), &cm).await;
                sleep(Duration::from_millis(40)).await;
            }
        })
    };

    let started = Instant::now();
    let mut next = 3;
    let mut lines = Vec::new();
    let mut terminated = None;
    for fault in [Fault::Sigterm, Fault::Sigkill, Fault::Sigstop, Fault::Stall] {
        // The current leader: the replica with the largest token, once it has reconciled.
        let (leader, token) = loop {
            replicas.iter_mut().for_each(Replica::poll);
            let best = replicas
                .iter()
                .enumerate()
                .filter_map(|(i, r)| Some((i, r.token()?)))
                .max_by_key(|(_, t)| *t);
            if let Some((i, t)) = best
                && replicas[i].first_reconcile_after(started, t).is_some()
            {
                break (i, t);
            }
            assert!(
                started.elapsed() < Duration::from_secs(120),
                "no leader reconciling"
            );
            sleep(Duration::from_millis(10)).await;
        };
        sleep(Duration::from_millis(300)).await;
        let at = Instant::now();
        match fault {
            Fault::Sigterm => {
                terminated = Some(leader);
                replicas[leader].proc.signal(Signal::TERM);
            }
            Fault::Sigkill => replicas[leader].proc.signal(Signal::KILL),
            Fault::Sigstop => replicas[leader].proc.signal(Signal::STOP),
            Fault::Stall => replicas[leader].proxy.set(Mode::Stall),
        }
        let (successor, first) = loop {
            replicas.iter_mut().for_each(Replica::poll);
            if let Some(found) = replicas
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != leader)
                .find_map(|(i, r)| Some((i, r.first_reconcile_after(at, token + 1)?)))
            {
                break found;
            }
            assert!(
                at.elapsed() < Duration::from_secs(30),
                "{fault:?}: no successor reconciled within 30 s"
            );
            sleep(Duration::from_millis(5)).await;
        };
        let line = format!(
            "{fault:?} of leader {} (token {token}): {} reconciled after {:?}",
            replicas[leader].id,
            replicas[successor].id,
            first - at
        );
        println!("{line}");
        lines.push(line);
        // Let the successor write for a while, then bring the old leader back where it can.
        sleep(Duration::from_millis(500)).await;
        match fault {
            Fault::Sigterm | Fault::Sigkill => {
                let id = format!("r{next}");
                next += 1;
                replicas.push(Replica::start(server, &ns, &id).await);
            }
            Fault::Sigstop => replicas[leader].proc.signal(Signal::CONT),
            Fault::Stall => replicas[leader].proxy.set(Mode::Normal),
        }
    }
    changer.abort();
    // Everything converges.
    let deadline = Instant::now() + Duration::from_secs(60);
    let left = loop {
        let left = unconverged(&api).await;
        if left.is_empty() || Instant::now() > deadline {
            break left;
        }
        sleep(Duration::from_millis(200)).await;
    };
    sleep(Duration::from_millis(500)).await;
    let logs: String = replicas.iter().map(Replica::log_text).collect();
    // On SIGTERM the reconciles drained inside the term and the Lease was released: nothing was
    // left running past the term, and the lock was not left to expire.
    let drained = terminated
        .map(|i| replicas[i].log_text())
        .unwrap_or_default();
    assert!(
        !drained.contains("has not returned") && !drained.contains("past the end of the term"),
        "the SIGTERM'd leader's work overran its term:\n{drained}"
    );
    for r in &replicas {
        r.proc.kill();
    }
    assert!(left.is_empty(), "not converged: {left:?}");

    // The history, in the order the API server committed it.
    let mut history: Vec<Write> = writes.lock().unwrap().values().cloned().collect();
    history.sort_by_key(|w| w.version);
    let unfenced: Vec<&Write> = history.iter().filter(|w| w.token.is_none()).collect();
    assert!(
        unfenced.is_empty(),
        "writes without a fencing token: {unfenced:?}"
    );
    let mut newest = 0;
    let mut late = Vec::new();
    let mut per_token: BTreeMap<u64, (usize, String)> = BTreeMap::new();
    for w in &history {
        let t = w.token.unwrap_or_default();
        if t < newest {
            late.push(w.clone());
        }
        newest = newest.max(t);
        let e = per_token.entry(t).or_insert((0, w.by.clone()));
        e.0 += 1;
    }
    println!(
        "{} writes recorded; by term: {}",
        history.len(),
        per_token
            .iter()
            .map(|(t, (n, by))| format!("token {t} ({by}): {n}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    assert!(
        late.is_empty(),
        "writes of an earlier term after a later term's first write: {late:?}"
    );
    assert!(per_token.len() >= 5, "a term per fault: {per_token:?}");
    // The source the operator cannot parse is named in a log line, and did not stop anything.
    let named = logs
        .lines()
        .find(|l| l.contains("cannot derive from this ConfigMap") && l.contains(BAD));
    println!(
        "{}",
        named.unwrap_or("(no line naming the unparsable ConfigMap)")
    );
    assert!(named.is_some());
    // The frozen and the stalled leader came back as standbys: their terms ended.
    assert!(
        logs.lines().filter(|l| l.starts_with("stopped ")).count() >= 2,
        "{lines:?}"
    );
}
