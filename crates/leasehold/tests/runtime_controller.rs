//! `runtime::run_controller_while_leading` on the real API server: three replicas of a
//! ConfigMap controller, warm informers on all of them, reconciles only by the leader, and a
//! graceful handover after which the new leader reconciles every object from its warm store.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api,
    api::{ObjectMeta, Patch, PatchParams, PostParams},
    runtime::{controller::Action, watcher},
};
use leasehold::{
    Config, Elector, Timing,
    backend::kubernetes::{ApiClient, LeaseLock},
    runtime::{Informer, run_controller_while_leading},
};
use leasehold_testing::harness::{self, unique};
use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
    time::Duration,
};
use tokio::time::{Instant, sleep};
use tokio_util::sync::CancellationToken;

const OBJECTS: usize = 30;
const BY: &str = "leasehold.test/reconciled-by";

/// One reconcile: who, in which term, and when it ran.
#[derive(Clone, Debug)]
struct Ran {
    who: String,
    token: u64,
    start: Instant,
    end: Instant,
}

struct Ctx {
    who: String,
    token: u64,
    api: Api<ConfigMap>,
    log: Arc<Mutex<Vec<Ran>>>,
    panics: Arc<std::sync::atomic::AtomicUsize>,
}

async fn reconcile(cm: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, kube::Error> {
    let start = Instant::now();
    let name = cm.metadata.name.clone().unwrap_or_default();
    if name.ends_with("-panic") {
        // A reconcile with a bug: the controller must carry on, and the election too.
        ctx.panics
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        panic!("cannot reconcile {name}");
    }
    // The fencing token rides on the write, as an operator's writes should carry it.
    let by = format!("{}/{}", ctx.who, ctx.token);
    if cm.metadata.annotations.as_ref().and_then(|a| a.get(BY)) != Some(&by) {
        let patch = serde_json::json!({ "metadata": { "annotations": { BY: by } } });
        ctx.api
            .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await?;
    }
    ctx.log.lock().unwrap().push(Ran {
        who: ctx.who.clone(),
        token: ctx.token,
        start,
        end: Instant::now(),
    });
    Ok(Action::await_change())
}

fn error_policy(_: Arc<ConfigMap>, error: &kube::Error, _: Arc<Ctx>) -> Action {
    eprintln!("reconcile failed: {error}");
    Action::requeue(Duration::from_millis(200))
}

/// Who reconciled each labelled ConfigMap last, by its annotation.
async fn reconciled_by(api: &Api<ConfigMap>, label: &str) -> BTreeMap<String, String> {
    let list = api
        .list(&kube::api::ListParams::default().labels(&format!("app={label}")))
        .await
        .unwrap();
    list.items
        .into_iter()
        .filter_map(|cm| {
            let by = cm.metadata.annotations?.get(BY)?.clone();
            Some((cm.metadata.name?, by))
        })
        .collect()
}

async fn all_by(api: &Api<ConfigMap>, label: &str, who: impl Fn(&str) -> bool) -> Instant {
    let until = Instant::now() + Duration::from_secs(20);
    loop {
        let by = reconciled_by(api, label).await;
        if by.len() == OBJECTS && by.values().all(|b| who(b)) {
            return Instant::now();
        }
        assert!(Instant::now() < until, "not converged: {by:?}");
        sleep(Duration::from_millis(5)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_leader_reconciles_and_a_new_leader_starts_from_a_warm_store() {
    let server = harness::shared().await;
    let client: ApiClient =
        leasehold::backend::kubernetes::client(Some(&server.kubeconfig("admin")))
            .await
            .unwrap();
    let kube = client.kube().clone();
    let api: Api<ConfigMap> = Api::namespaced(kube.clone(), "default");
    let label = unique("rt");
    let names = (0..OBJECTS)
        .map(|i| i.to_string())
        .chain(["panic".to_owned()]);
    for i in names {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(format!("{label}-{i}")),
                labels: Some([("app".to_owned(), label.clone())].into()),
                ..Default::default()
            },
            ..Default::default()
        };
        api.create(&PostParams::default(), &cm).await.unwrap();
    }

    let lease = unique("rt-lease");
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    };
    let log: Arc<Mutex<Vec<Ran>>> = Arc::default();
    let panics: Arc<std::sync::atomic::AtomicUsize> = Arc::default();
    let mut replicas = Vec::new();
    for r in 0..3 {
        let who = format!("r{r}");
        let informer = Informer::spawn(
            api.clone(),
            watcher::Config::default().labels(&format!("app={label}")),
        );
        let elector = Elector::with_config(
            LeaseLock::new(client.clone(), "default", &lease),
            Config::new(who.clone()).timing(timing.clone()),
        )
        .unwrap();
        let handle = elector.handle();
        let cancel = CancellationToken::new();
        let (api, log, who_c, panics) = (api.clone(), log.clone(), who.clone(), panics.clone());
        let task = tokio::spawn(run_controller_while_leading(
            elector,
            cancel.clone(),
            informer,
            reconcile,
            error_policy,
            move |term| {
                Arc::new(Ctx {
                    who: who_c.clone(),
                    token: term.fencing_token().0,
                    api: api.clone(),
                    log: log.clone(),
                    panics: panics.clone(),
                })
            },
            kube::runtime::controller::Config::default(),
        ));
        replicas.push((who, handle, cancel, task));
    }

    // The first leader reconciles everything.
    all_by(&api, &label, |_| true).await;
    let (leader, first_token, cancel) = replicas
        .iter()
        .find(|(_, h, ..)| h.is_leader())
        .map(|(w, h, c, _)| (w.clone(), h.status().fencing_token.unwrap().0, c.clone()))
        .expect("a leader");
    // Let the standbys' stores settle, then hand over gracefully.
    sleep(Duration::from_millis(500)).await;
    let handed_over = Instant::now();
    cancel.cancel();
    let first_new = loop {
        let ran = log.lock().unwrap().clone();
        if let Some(r) = ran
            .iter()
            .find(|r| r.who != leader && r.start >= handed_over)
        {
            break r.end;
        }
        assert!(
            handed_over.elapsed() < Duration::from_secs(10),
            "no new leader reconciled"
        );
        sleep(Duration::from_millis(1)).await;
    };
    let converged = all_by(&api, &label, |b| {
        !b.starts_with(&format!("{leader}/"))
            && b.rsplit('/').next() > Some(&*first_token.to_string())
    })
    .await;
    eprintln!(
        "graceful handover to the first reconcile by the new leader: {:?}; every object reconciled by it: {:?} ({OBJECTS} objects)",
        first_new - handed_over,
        converged - handed_over
    );

    // Never two replicas reconciling at once: the old leader's reconciles all ended before
    // any of its successor's began.
    let ran = log.lock().unwrap().clone();
    for a in &ran {
        for b in &ran {
            if a.who != b.who {
                assert!(
                    a.end <= b.start || b.end <= a.start,
                    "{a:?} and {b:?} overlap"
                );
            }
        }
    }
    let mut tokens: Vec<(String, u64)> = ran.iter().map(|r| (r.who.clone(), r.token)).collect();
    tokens.dedup();
    assert_eq!(
        tokens.len(),
        2,
        "two terms reconciled, one after the other: {tokens:?}"
    );
    assert!(tokens[1].1 > tokens[0].1, "{tokens:?}");

    assert!(
        panics.load(std::sync::atomic::Ordering::Relaxed) >= 2,
        "the panicking reconcile was tried in both terms, and neither run ended"
    );

    for (_, _, cancel, task) in replicas {
        cancel.cancel();
        task.await.unwrap();
    }
    for i in (0..OBJECTS)
        .map(|i| i.to_string())
        .chain(["panic".to_owned()])
    {
        let _ = api
            .delete(&format!("{label}-{i}"), &Default::default())
            .await;
    }
}

/// kube-runtime 5.0's `Store::wait_until_ready` wakes only the last of several concurrent
/// waiters; `Informer::ready` must wake them all (four reconciles waiting on a second
/// informer's store, as the example operator's do, used to hang and hold up the drain).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_task_waiting_for_an_informer_to_fill_is_woken() {
    let server = harness::shared().await;
    let client = server.client("admin").await;
    let informer = Informer::spawn(
        Api::<ConfigMap>::namespaced(client, "default"),
        watcher::Config::default(),
    );
    let ready = informer.ready();
    let waiters: Vec<_> = (0..8)
        .map(|_| {
            let ready = ready.clone();
            tokio::spawn(async move { ready.wait().await })
        })
        .collect();
    let all = futures_util::future::join_all(waiters);
    let woken = tokio::time::timeout(Duration::from_secs(20), all)
        .await
        .expect("every waiter is woken once the store is filled");
    assert!(woken.into_iter().all(|w| w.unwrap()));
    assert!(ready.is_ready());
    println!("8 tasks woken when the informer's store was filled");
}

/// Log lines, captured for the bad-input tests (one subscriber for the whole test binary).
fn captured() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: std::sync::OnceLock<Arc<Mutex<Vec<u8>>>> = std::sync::OnceLock::new();
    LOGS.get_or_init(|| {
        let logs: Arc<Mutex<Vec<u8>>> = Arc::default();
        let writer = logs.clone();
        let _ = tracing_subscriber::fmt()
            .with_ansi(false)
            .with_writer(move || Capture(writer.clone()))
            .try_init();
        logs
    })
}

struct Capture(Arc<Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        std::io::stderr().write(buf)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn logs_containing(all: &[&str]) -> Option<String> {
    let logs = String::from_utf8_lossy(&captured().lock().unwrap()).into_owned();
    logs.lines()
        .find(|l| all.iter().all(|s| l.contains(s)))
        .map(str::to_owned)
}

fn short_timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    }
}

/// A replica whose informer may not list or watch (RBAC): the failure is logged naming the
/// resource, the replica still elects (and leads), and it reconciles nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forbidden_watch_is_named_and_the_election_goes_on() {
    captured();
    let server = harness::shared().await;
    let admin = server.client("admin").await;
    let nobody = server.client("nobody").await;
    let lease = unique("rt-403");
    let informer = Informer::spawn(
        Api::<ConfigMap>::namespaced(nobody, "default"),
        watcher::Config::default(),
    );
    let elector = Elector::with_config(
        LeaseLock::new(admin, "default", &lease),
        Config::new("r-403").timing(short_timing()),
    )
    .unwrap();
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let reconciled = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = reconciled.clone();
    let task = tokio::spawn(run_controller_while_leading(
        elector,
        cancel.clone(),
        informer,
        |_: Arc<ConfigMap>, ctx: Arc<Arc<std::sync::atomic::AtomicUsize>>| async move {
            ctx.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            Ok::<_, kube::Error>(Action::await_change())
        },
        |_, _: &kube::Error, _| Action::await_change(),
        move |_| Arc::new(count.clone()),
        kube::runtime::controller::Config::default(),
    ));
    let start = Instant::now();
    let line = loop {
        if let Some(line) = logs_containing(&["informer", "forbidden", "configmaps"]) {
            break line;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no log line names the denial"
        );
        sleep(Duration::from_millis(50)).await;
    };
    println!("{line}");
    assert!(handle.acquired().await.is_some(), "the election goes on");
    sleep(Duration::from_millis(500)).await;
    assert_eq!(reconciled.load(std::sync::atomic::Ordering::Relaxed), 0);
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the run ends at once: nothing was reconciling")
        .unwrap();
}

/// A reconcile that never returns: the overrun is logged and counted at the term's deadline,
/// the controller is aborted half the safety margin later (still before the lease can expire
/// for anyone else), and only then is the lock released.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_that_never_returns_is_cut_off_before_the_release() {
    captured();
    let server = harness::shared().await;
    let admin = server.client("admin").await;
    let api: Api<ConfigMap> = Api::namespaced(admin.clone(), "default");
    let label = unique("rt-hang");
    api.create(
        &PostParams::default(),
        &ConfigMap {
            metadata: ObjectMeta {
                name: Some(label.clone()),
                labels: Some([("app".to_owned(), label.clone())].into()),
                ..Default::default()
            },
            ..Default::default()
        },
    )
    .await
    .unwrap();
    let lease = unique("rt-hang-lease");
    let elector = Elector::with_config(
        LeaseLock::new(admin.clone(), "default", &lease),
        Config::new("r-hang").timing(short_timing()),
    )
    .unwrap();
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let started = Arc::new(tokio::sync::Notify::new());
    let notify = started.clone();
    let task = tokio::spawn(run_controller_while_leading(
        elector,
        cancel.clone(),
        Informer::spawn(
            api.clone(),
            watcher::Config::default().labels(&format!("app={label}")),
        ),
        |_: Arc<ConfigMap>, ctx: Arc<Arc<tokio::sync::Notify>>| async move {
            ctx.notify_one();
            std::future::pending::<()>().await;
            Ok::<_, kube::Error>(Action::await_change())
        },
        |_, _: &kube::Error, _| Action::await_change(),
        move |_| Arc::new(notify.clone()),
        kube::runtime::controller::Config::default(),
    ));
    let term = handle.acquired().await.expect("leads");
    started.notified().await;
    let stop = Instant::now();
    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .expect("the run ends")
        .unwrap();
    let took = stop.elapsed();
    let deadline = term.valid_until().saturating_duration_since(stop);
    println!("cancelled with the deadline {deadline:?} away; the run ended after {took:?}");
    // Half the margin (lease − renew deadline = 1 s) past the term's deadline, and no later.
    assert!(
        took <= deadline + Duration::from_millis(500) + Duration::from_millis(300),
        "{took:?}"
    );
    assert!(handle.metrics().work_overruns() >= 1);
    let line = logs_containing(&["reconciles still running past the end of the term"])
        .expect("the abort is logged");
    println!("{line}");
    // Released once the aborted work had returned, before the lease could expire.
    let lease = Api::<k8s_openapi::api::coordination::v1::Lease>::namespaced(admin, "default")
        .get(&lease)
        .await
        .unwrap();
    let spec = lease.spec.unwrap_or_default();
    assert_eq!(
        spec.holder_identity.as_deref().unwrap_or(""),
        "",
        "released"
    );
    let released = spec.renew_time.map(|t| t.0);
    println!("released at {released:?}, after the work was aborted");
}
