//! The election queue on a real etcd (the one under the harness's API server), beside etcd's own
//! election clients.

use super::*;
use leasehold_core::{
    Timing,
    queue::{Action, Event, Queue},
};
use leasehold_testing::harness::{self, Proc, unique};
use std::path::Path;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Note {
    Started(String, u64),
    Stopped(String, u64),
}

fn timing() -> Timing {
    Timing {
        lease_duration: Duration::from_secs(5),
        renew_deadline: Duration::from_secs(3),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    }
}

/// Runs one candidate: the queue, its executor, and leadership reported on `tx` (the work stops
/// at once, so `Drained` follows every `StoppedLeading`).
async fn run(
    election: EtcdElection,
    id: String,
    cancel: CancellationToken,
    tx: mpsc::UnboundedSender<Note>,
) {
    let origin = Instant::now();
    let mut q = Queue::new(id.clone(), election.name(), timing());
    let mut io = Io::new(&election, origin);
    let mut event = Some(Event::Start);
    let (mut drained, mut cancel_sent) = (false, false);
    loop {
        if let Some(ev) = event.take() {
            for a in q.handle(ev, origin.elapsed()) {
                match &a {
                    Action::StartedLeading { token } => {
                        let _ = tx.send(Note::Started(id.clone(), token.0));
                    }
                    Action::StoppedLeading { token, .. } => {
                        let _ = tx.send(Note::Stopped(id.clone(), token.0));
                        drained = true;
                    }
                    Action::Finished => return,
                    Action::NewLeader { .. }
                    | Action::StrayKey { .. }
                    | Action::TransferRefused { .. } => {}
                    _ => io.execute(&a),
                }
            }
        }
        let at = q
            .deadline()
            .map_or(origin + Duration::from_secs(3600), |d| origin + d);
        event = Some(tokio::select! {
            biased;
            () = std::future::ready(()), if drained => {
                drained = false;
                Event::Drained
            }
            () = cancel.cancelled(), if !cancel_sent => {
                cancel_sent = true;
                Event::Cancel
            }
            () = tokio::time::sleep_until(at) => Event::Timer,
            ev = io.next() => ev,
        });
    }
}

async fn wait_line(path: &Path, needle: &str, limit: Duration) -> String {
    let start = Instant::now();
    loop {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if let Some(l) = text.lines().find(|l| l.contains(needle)) {
            return l.to_owned();
        }
        assert!(
            start.elapsed() < limit,
            "`{needle}` not in {} after {limit:?}: {text}",
            path.display()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Waits until the election `name` has `n` keys.
async fn wait_keys(client: &Client, name: &str, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let got = client
            .clone()
            .get(format!("{name}/"), Some(GetOptions::new().with_prefix()))
            .await
            .map(|r| r.kvs().len())
            .unwrap_or(0);
        if got >= n {
            return;
        }
        assert!(Instant::now() < deadline, "{got} keys in {name}, not {n}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

async fn next(rx: &mut mpsc::UnboundedReceiver<Note>, limit: Duration) -> Note {
    tokio::time::timeout(limit, rx.recv())
        .await
        .unwrap_or_else(|_| panic!("nothing within {limit:?}"))
        .unwrap()
}

/// leasehold candidates, etcd's Go election and `etcdctl elect` on one election: one leader at
/// a time, leadership both ways, tokens (create revisions) increasing, and `etcdctl elect -l`
/// shows a leasehold leader's proposal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leasehold_go_and_etcdctl_take_turns_in_one_election() {
    let server = harness::shared().await;
    let bins = harness::bins();
    let url = server.etcd_url();
    let name = unique("etcd-elect");
    let client = Client::connect([url.as_str()], None).await.unwrap();
    let election = EtcdElection::new(client.clone(), name.clone());
    let (tx, mut rx) = mpsc::unbounded_channel();

    // 1. A Go candidate leads first.
    let go_log = server.dir().join(format!("{name}-go.log"));
    let go = Proc::spawn(
        "etcd-elector",
        &bins.etcd_elector,
        &[
            "-endpoints".into(),
            url.clone(),
            "-name".into(),
            name.clone(),
            "-id".into(),
            "go-1".into(),
            "-ttl".into(),
            "5".into(),
        ],
        &go_log,
    );
    let elected = wait_line(&go_log, "elected go-1", Duration::from_secs(20)).await;
    let go_rev: u64 = elected.rsplit(' ').next().unwrap().parse().unwrap();

    // 2. Two leasehold candidates queue behind it; neither leads.
    let cancel_a = CancellationToken::new();
    let a = tokio::spawn(run(
        election.clone(),
        "rs-a".into(),
        cancel_a.clone(),
        tx.clone(),
    ));
    // rs-a queued (its key is there) before rs-b starts: the queue's order is the test's.
    wait_keys(&client, &name, 2).await;
    let cancel_b = CancellationToken::new();
    let b = tokio::spawn(run(
        election.clone(),
        "rs-b".into(),
        cancel_b.clone(),
        tx.clone(),
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(rx.try_recv().is_err(), "nobody leads behind go-1");

    // 3. The Go candidate resigns: the first leasehold candidate leads within milliseconds,
    //    with a larger create revision.
    let resigned_at = Instant::now();
    go.signal(rustix::process::Signal::TERM);
    let Note::Started(who, t1) = next(&mut rx, Duration::from_secs(10)).await else {
        panic!("a start")
    };
    eprintln!(
        "etcd: go-1 resigned -> {who} leads {:.1} ms after SIGTERM",
        resigned_at.elapsed().as_secs_f64() * 1e3
    );
    assert_eq!(who, "rs-a");
    assert!(t1 > go_rev, "{go_rev} -> {t1}");

    // 4. `etcdctl elect -l` (it observes until stopped) shows the leasehold leader's key and
    //    proposal.
    let observe_log = server.dir().join(format!("{name}-observe.log"));
    let observer = Proc::spawn(
        "etcdctl-elect-l",
        &bins.etcdctl,
        &[
            "--endpoints".into(),
            url.clone(),
            "elect".into(),
            "-l".into(),
            name.clone(),
        ],
        &observe_log,
    );
    wait_line(&observe_log, "rs-a", Duration::from_secs(10)).await;
    let shown = std::fs::read_to_string(&observe_log).unwrap();
    eprintln!("etcdctl elect -l printed: {shown:?}");
    assert!(shown.starts_with(&format!("{name}/")), "{shown}");
    observer.kill();

    // 5. `etcdctl elect` queues behind the leasehold candidates; leadership goes rs-a -> rs-b ->
    //    etcdctl as each leaves.
    let ctl_log = server.dir().join(format!("{name}-ctl.log"));
    let ctl = Proc::spawn(
        "etcdctl-elect",
        &bins.etcdctl,
        &[
            "--endpoints".into(),
            url.clone(),
            "elect".into(),
            name.clone(),
            "ctl-1".into(),
        ],
        &ctl_log,
    );
    wait_keys(&client, &name, 3).await;
    cancel_a.cancel();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        Note::Stopped("rs-a".into(), t1)
    );
    let Note::Started(who, t2) = next(&mut rx, Duration::from_secs(10)).await else {
        panic!("a start")
    };
    assert_eq!(who, "rs-b");
    assert!(t2 > t1);
    a.await.unwrap();
    assert!(
        !std::fs::read_to_string(&ctl_log)
            .unwrap_or_default()
            .contains("ctl-1"),
        "etcdctl waits behind rs-b"
    );
    cancel_b.cancel();
    assert_eq!(
        next(&mut rx, Duration::from_secs(5)).await,
        Note::Stopped("rs-b".into(), t2)
    );
    b.await.unwrap();
    let line = wait_line(&ctl_log, "ctl-1", Duration::from_secs(10)).await;
    eprintln!("etcdctl elect printed `{line}` after rs-b left");
    ctl.signal(rustix::process::Signal::TERM);
    go.kill();
    ctl.kill();
}

/// The leader's etcd goes away: it stops acting within the renew deadline of its last answered
/// keepalive's send, before its lease could expire on the server (TTL 5 s, counted from the
/// keepalive's receipt); once etcd is back, a term with a larger token begins.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leader_cut_off_from_etcd_stops_before_its_lease_can_expire() {
    let mut etcd = harness::EtcdServer::start().await;
    let client = Client::connect([etcd.url()], None).await.unwrap();
    let election = EtcdElection::new(client, unique("etcd-cut"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let mut tasks = Vec::new();
    let cancel = CancellationToken::new();
    for id in ["cut-a", "cut-b"] {
        tasks.push(tokio::spawn(run(
            election.clone(),
            id.into(),
            cancel.clone(),
            tx.clone(),
        )));
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let Note::Started(leader, t1) = next(&mut rx, Duration::from_secs(10)).await else {
        panic!("a start")
    };
    // A keepalive or two in steady state.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut_at = Instant::now();
    etcd.stop();
    let stopped = next(&mut rx, Duration::from_secs(10)).await;
    let took = cut_at.elapsed();
    eprintln!("etcd stopped: {leader} stopped acting {took:?} later");
    assert_eq!(stopped, Note::Stopped(leader.clone(), t1));
    assert!(
        took < Duration::from_secs(5),
        "stopped {took:?} after the cut: the lease (5 s) could have expired"
    );

    etcd.restart().await;
    let back_at = Instant::now();
    let Note::Started(who, t2) = next(&mut rx, Duration::from_secs(30)).await else {
        panic!("a start")
    };
    eprintln!(
        "etcd back: {who} leads {:?} later, token {t1} -> {t2}",
        back_at.elapsed()
    );
    assert!(t2 > t1, "{t1} -> {t2}");
    cancel.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

/// One leader at a time, and tokens increasing, from the candidates' notes in the order sent.
#[derive(Default)]
struct History {
    leader: Option<(String, u64)>,
    last_token: u64,
    terms: usize,
}

impl History {
    fn check(&mut self, note: Note) {
        match note {
            Note::Started(id, t) => {
                assert!(
                    self.leader.is_none(),
                    "{id} started while {:?} leads",
                    self.leader
                );
                assert!(t > self.last_token, "token {t} after {}", self.last_token);
                self.last_token = t;
                self.terms += 1;
                self.leader = Some((id, t));
            }
            Note::Stopped(id, t) => assert_eq!(self.leader.take(), Some((id, t))),
        }
    }
}

/// Three candidates on a 3-member cluster while the raft leader member is killed and restarted,
/// three times, and then quorum is lost: never two leaders, the leader stops within the renew
/// deadline when no keepalive can be answered, tokens increase, and a leader at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raft_leader_restarts_on_a_3_member_cluster_never_make_two_leaders() {
    let mut cluster = harness::EtcdCluster::start().await;
    let client = Client::connect(cluster.urls(), None).await.unwrap();
    let election = EtcdElection::new(client, unique("etcd-raft"));
    let (tx, mut rx) = mpsc::unbounded_channel();
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for id in ["raft-a", "raft-b", "raft-c"] {
        tasks.push(tokio::spawn(run(
            election.clone(),
            id.into(),
            cancel.clone(),
            tx.clone(),
        )));
    }
    drop(tx);
    let mut h = History::default();
    h.check(next(&mut rx, Duration::from_secs(10)).await);
    for round in 0..3 {
        let m = cluster.raft_leader().await.expect("a raft leader");
        cluster.stop_member(m);
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_millis(1500) {
            if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                h.check(n);
            }
        }
        cluster.restart_member(m).await;
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            if let Ok(Some(n)) = tokio::time::timeout(Duration::from_millis(100), rx.recv()).await {
                h.check(n);
            }
        }
        eprintln!(
            "round {round}: raft leader m{m} killed and restarted; leader now {:?}",
            h.leader
        );
    }
    // Quorum lost (two members down) for longer than the renew deadline: the leader stops
    // acting within it; with quorum back, a new term with a larger token.
    let deadline = Instant::now() + Duration::from_secs(15);
    while h.leader.is_none() {
        let n = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a leader before the quorum loss")
            .unwrap();
        h.check(n);
    }
    let (was, token) = h.leader.clone().expect("a leader before the quorum loss");
    let cut_at = Instant::now();
    cluster.stop_member(1);
    cluster.stop_member(2);
    let stopped = next(&mut rx, Duration::from_secs(10)).await;
    let took = cut_at.elapsed();
    eprintln!("quorum lost: {was} stopped acting {took:?} later");
    assert!(
        took < Duration::from_secs(5),
        "{took:?}: the lease could have expired"
    );
    h.check(stopped);
    tokio::time::sleep(Duration::from_secs(1)).await;
    cluster.restart_member(1).await;
    cluster.restart_member(2).await;
    let back_at = Instant::now();
    h.check(next(&mut rx, Duration::from_secs(30)).await);
    eprintln!(
        "quorum back: {:?} leads {:?} later (token {token} before)",
        h.leader,
        back_at.elapsed()
    );
    // Whoever leads now, or soon: a leader at the end.
    let deadline = Instant::now() + Duration::from_secs(15);
    while h.leader.is_none() {
        let n = tokio::time::timeout_at(deadline, rx.recv())
            .await
            .expect("a leader after the faults")
            .unwrap();
        h.check(n);
    }
    eprintln!(
        "3 raft leader restarts: {} terms, last token {}",
        h.terms, h.last_token
    );
    cancel.cancel();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The library's `Elector` on an etcd election: terms through the handle, the work drained
/// before the next candidate leads, a step-down handing over within milliseconds, status.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_elector_runs_on_an_etcd_election() {
    let server = harness::shared().await;
    let client = Client::connect([server.etcd_url()], None).await.unwrap();
    let election = EtcdElection::new(client, unique("etcd-elector"));
    let log: Arc<std::sync::Mutex<Vec<String>>> = Arc::default();
    let spawn = |id: &'static str| {
        let elector = crate::Elector::new(election.clone(), id, timing()).unwrap();
        let handle = elector.handle();
        let cancel = CancellationToken::new();
        let log = Arc::clone(&log);
        let task = tokio::spawn(elector.run_while_leading(cancel.clone(), move |term| {
            let log = Arc::clone(&log);
            async move {
                let t = term.fencing_token();
                log.lock().unwrap().push(format!("{id} start {t}"));
                term.lost().await;
                // Some wind-down: the next term must wait for it.
                tokio::time::sleep(Duration::from_millis(100)).await;
                log.lock().unwrap().push(format!("{id} end {t}"));
            }
        }));
        (handle, cancel, task)
    };
    let (ha, cancel_a, task_a) = spawn("el-a");
    let first = ha.acquired().await.unwrap();
    let (hb, cancel_b, task_b) = spawn("el-b");
    let deadline = Instant::now() + Duration::from_secs(10);
    while hb.leader() != "el-a" {
        assert!(Instant::now() < deadline, "el-b never saw el-a lead");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(!hb.is_leader() && ha.is_leader());
    assert_eq!(ha.status().fencing_token, Some(first.fencing_token()));

    let asked = Instant::now();
    assert!(ha.step_down(Duration::from_secs(30)));
    let second = hb.acquired().await.unwrap();
    eprintln!(
        "etcd Elector: step-down to el-b's term {:.1} ms (the work took 100 ms to wind down)",
        asked.elapsed().as_secs_f64() * 1e3
    );
    assert!(second.fencing_token() > first.fencing_token());
    // The work is a task of its own: its first line may come just after the term is handed out.
    let deadline = Instant::now() + Duration::from_secs(5);
    while log.lock().unwrap().len() < 3 {
        assert!(Instant::now() < deadline, "el-b's work never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let lines = log.lock().unwrap().clone();
    assert_eq!(
        lines,
        [
            format!("el-a start {}", first.fencing_token()),
            format!("el-a end {}", first.fencing_token()),
            format!("el-b start {}", second.fencing_token()),
        ],
        "drained before the next term"
    );
    // el-a sits out its hold-off; el-b keeps leading through its keepalives.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hb.is_leader() && !ha.is_leader());
    assert_eq!(ha.leader(), "el-b");
    for (cancel, task) in [(cancel_b, task_b), (cancel_a, task_a)] {
        cancel.cancel();
        task.await.unwrap();
    }
    assert_eq!(ha.status().role, leasehold_core::Role::Stopped);
}

/// Electors on one shared session per process, in many elections at once: one lease, one
/// keepalive stream and one watch stream per process, whatever the number of elections; the
/// standby process takes over each election its leader leaves; a lost lease steps every leader
/// on it down; and cut off from etcd, every leader stops before the lease can expire.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_elections_share_one_session_per_process() {
    const N: usize = 40;
    let mut etcd = harness::EtcdServer::start().await;
    let url = etcd.url();
    let base = unique("shared");
    let names: Vec<String> = (0..N).map(|i| format!("{base}-{i}")).collect();
    let process = |id: &'static str| {
        let (url, names) = (url.clone(), names.clone());
        async move {
            let client = Client::connect([url.as_str()], None).await.unwrap();
            let session = EtcdSession::new(client, timing());
            let cancel = CancellationToken::new();
            let mut handles = Vec::new();
            let mut tasks = Vec::new();
            for name in &names {
                let elector =
                    crate::Elector::new(session.election(name.clone()), id, timing()).unwrap();
                handles.push(elector.handle());
                let child = cancel.child_token();
                tasks.push((child.clone(), tokio::spawn(elector.run(child))));
            }
            (session, cancel, handles, tasks)
        }
    };
    let (sa, cancel_a, ha, mut tasks_a) = process("sh-a").await;
    let mut firsts = Vec::new();
    for h in &ha {
        firsts.push(h.acquired().await.unwrap().fencing_token());
    }
    let (sb, cancel_b, hb, tasks_b) = process("sh-b").await;
    let until = Instant::now() + Duration::from_secs(20);
    while hb.iter().any(|h| h.leader() != "sh-a") {
        assert!(
            Instant::now() < until,
            "sh-b never saw sh-a lead everywhere"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Every key of a process is on its one lease.
    let client = Client::connect([etcd.url()], None).await.unwrap();
    let (la, lb) = (sa.lease().unwrap(), sb.lease().unwrap());
    for name in &names {
        let e = EtcdElection::new(client.clone(), name.clone());
        let leases: Vec<i64> = e
            .candidates()
            .await
            .unwrap()
            .iter()
            .map(|c| c.lease)
            .collect();
        assert_eq!(leases, [la, lb], "{name}");
    }
    // One keepalive stream and one watch stream per process, for 40 elections each; over 3 s
    // of steady state, each process's keepalives every 1.5 s, not one per election.
    let before = harness::etcd_metrics(&etcd.url()).unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let metrics = harness::etcd_metrics(&etcd.url()).unwrap();
    let sum = |text: &str, metric: &str, method: &str| {
        harness::metric_sum(text, &format!("{metric}{{grpc_method=\"{method}\""))
    };
    // Streams ever opened (etcd counts a stream as started when it opens).
    let keepalive_streams = sum(&metrics, "grpc_server_started_total", "LeaseKeepAlive");
    let watch_opened = sum(&metrics, "grpc_server_started_total", "Watch");
    let keepalives = sum(&metrics, "grpc_server_msg_received_total", "LeaseKeepAlive")
        - sum(&before, "grpc_server_msg_received_total", "LeaseKeepAlive");
    let watchers = harness::metric_sum(&metrics, "etcd_debugging_mvcc_watcher_total");
    eprintln!(
        "2 processes x {N} elections: keepalive streams opened {keepalive_streams}, keepalives in 3 s {keepalives}, watch streams opened {watch_opened}, watchers {watchers}"
    );
    assert!(keepalive_streams <= 2.0, "{keepalive_streams}");
    // At most 3 per process in 3 s (sends at 0, 1.5 and 3 s), with 1 to spare each; one
    // session per election would send 80 and more.
    assert!(keepalives <= 8.0, "{keepalives} keepalives in 3 s");
    assert!(watch_opened <= 2.0, "{watch_opened} watch streams");
    assert_eq!(watchers, (2 * N) as f64);

    // A second elector in an election on the same session would share the first one's key:
    // refused, by name.
    let again = crate::Elector::new(sa.election(names[0].clone()), "sh-a2", timing());
    let Err(e) = again else {
        panic!("a second elector in one election on one session")
    };
    assert!(
        e.to_string().contains(&format!(
            "election `{}` already has an elector on this etcd session",
            names[0]
        )),
        "{e}"
    );

    // Half the elections' leaders leave: sh-b takes each over with a larger token.
    for (child, task) in tasks_a.drain(..N / 2) {
        child.cancel();
        task.await.unwrap();
    }
    for (i, h) in hb.iter().enumerate().take(N / 2) {
        let t = h.acquired().await.unwrap().fencing_token();
        assert!(t > firsts[i], "{t:?} after {:?}", firsts[i]);
    }
    assert!(ha[N / 2..].iter().all(crate::ElectorHandle::is_leader));
    // An elector whose run ended leaves its place for another.
    drop(crate::Elector::new(sa.election(names[0].clone()), "sh-a2", timing()).unwrap());

    // sh-a's lease revoked behind its back: every leader on it steps down, sh-b takes over,
    // and sh-a queues again on a new lease.
    let mut c = client.clone();
    c.lease_revoke(la).await.unwrap();
    for h in &hb[N / 2..] {
        h.acquired().await.unwrap();
    }
    let until = Instant::now() + Duration::from_secs(10);
    while ha[N / 2..].iter().any(crate::ElectorHandle::is_leader) || sa.lease() == Some(la) {
        assert!(
            Instant::now() < until,
            "sh-a still leads on a revoked lease"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    while sa.lease().is_none() {
        assert!(Instant::now() < until, "sh-a has no new lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Cut off from etcd: every leader stops within the renew deadline (3 s), before the
    // lease (5 s) can expire.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(hb.iter().all(crate::ElectorHandle::is_leader));
    let cut = Instant::now();
    etcd.stop();
    while hb.iter().any(crate::ElectorHandle::is_leader) {
        assert!(
            cut.elapsed() < Duration::from_secs(5),
            "a leader on the shared session still acts {:?} after the cut",
            cut.elapsed()
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    eprintln!(
        "etcd stopped: all {N} leaders stopped {:?} later",
        cut.elapsed()
    );
    etcd.restart().await;
    let back = Instant::now();
    let until = back + Duration::from_secs(30);
    while !names
        .iter()
        .enumerate()
        .all(|(i, _)| ha[i].is_leader() || hb[i].is_leader())
    {
        assert!(
            Instant::now() < until,
            "not every election has a leader again"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "etcd back: every election leads again {:?} later",
        back.elapsed()
    );
    cancel_a.cancel();
    cancel_b.cancel();
    for (_, t) in tasks_a.into_iter().chain(tasks_b) {
        t.await.unwrap();
    }
}

/// What a set reported, per election.
#[derive(Debug)]
enum SetNote {
    Started(usize, crate::Leadership),
    Stopped(usize, u64),
    Leader(usize, String),
}

/// Runs a set of `names` for `id` on its own session; its events on the channel.
async fn run_set(
    url: &str,
    id: &str,
    names: &[String],
    cancel: CancellationToken,
) -> (
    EtcdSession,
    mpsc::UnboundedReceiver<SetNote>,
    tokio::task::JoinHandle<()>,
) {
    let client = Client::connect([url], None).await.unwrap();
    let session = EtcdSession::new(client, timing());
    let (tx, rx) = mpsc::unbounded_channel();
    let set = ElectionSet::new(&session, id, timing()).on_event(move |e| {
        let _ = tx.send(match e {
            SetEvent::StartedLeading {
                index, leadership, ..
            } => SetNote::Started(index, leadership),
            SetEvent::StoppedLeading {
                index,
                fencing_token,
                ..
            } => SetNote::Stopped(index, fencing_token.0),
            SetEvent::NewLeader {
                index, identity, ..
            } => SetNote::Leader(index, identity.to_owned()),
        });
    });
    let run = tokio::spawn(set.run(names.to_vec(), cancel).unwrap());
    (session, rx, run)
}

/// The terms a set holds, by election, as its events tell them.
#[derive(Default)]
struct Terms {
    leading: std::collections::HashMap<usize, crate::Leadership>,
    leader: std::collections::HashMap<usize, String>,
    stopped: Vec<(usize, u64)>,
}

impl Terms {
    /// Takes in events until `done` holds, within `limit`.
    async fn until(
        &mut self,
        rx: &mut mpsc::UnboundedReceiver<SetNote>,
        limit: Duration,
        what: &str,
        done: impl Fn(&Self) -> bool,
    ) {
        let until = Instant::now() + limit;
        while !done(self) {
            match tokio::time::timeout_at(until, rx.recv()).await {
                Ok(Some(SetNote::Started(i, l))) => {
                    self.leading.insert(i, l);
                }
                Ok(Some(SetNote::Stopped(i, t))) => {
                    let l = self.leading.remove(&i).expect("stopped without a start");
                    assert_eq!(l.fencing_token().0, t);
                    assert!(l.is_lost(), "a stopped term's token is cancelled");
                    self.stopped.push((i, t));
                }
                Ok(Some(SetNote::Leader(i, id))) => {
                    self.leader.insert(i, id);
                }
                _ => panic!(
                    "{what}: not within {limit:?} ({} leading, {} stopped)",
                    self.leading.len(),
                    self.stopped.len()
                ),
            }
        }
    }
}

/// One `ElectionSet` per process holds every election on one task: sets in the same elections
/// queue behind each other, take over when a lease is revoked, stop before their lease can
/// expire when etcd goes away, lead again when it is back, and delete their keys on cancel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn election_sets_hold_many_elections_on_one_task_each() {
    const N: usize = 300;
    let mut etcd = harness::EtcdServer::start().await;
    let url = etcd.url();
    let base = unique("set");
    let names: Vec<String> = (0..N).map(|i| format!("{base}-{i}")).collect();
    let (cancel_a, cancel_b) = (CancellationToken::new(), CancellationToken::new());
    let t0 = Instant::now();
    let (sa, mut rx_a, run_a) = run_set(&url, "set-a", &names, cancel_a.clone()).await;
    let mut a = Terms::default();
    a.until(&mut rx_a, Duration::from_secs(20), "set-a leads all", |t| {
        t.leading.len() == N
    })
    .await;
    eprintln!(
        "set-a leads all {N} elections {:?} after its start",
        t0.elapsed()
    );
    let (sb, mut rx_b, run_b) = run_set(&url, "set-b", &names, cancel_b.clone()).await;
    let mut b = Terms::default();
    b.until(
        &mut rx_b,
        Duration::from_secs(20),
        "set-b sees set-a lead",
        |t| t.leader.len() == N && t.leader.values().all(|l| l == "set-a"),
    )
    .await;
    assert!(b.leading.is_empty());

    // Each process's keys on its one lease, one keepalive stream and one watch stream each.
    let client = Client::connect([url.as_str()], None).await.unwrap();
    let (la, lb) = (sa.lease().unwrap(), sb.lease().unwrap());
    for name in [&names[0], &names[N - 1]] {
        let e = EtcdElection::new(client.clone(), name.clone());
        let leases: Vec<i64> = e
            .candidates()
            .await
            .unwrap()
            .iter()
            .map(|c| c.lease)
            .collect();
        assert_eq!(leases, [la, lb], "{name}");
    }
    // Past the first keepalives (every 1.5 s).
    tokio::time::sleep(Duration::from_secs(2)).await;
    let metrics = harness::etcd_metrics(&url).unwrap();
    let sum = |metric: &str, method: &str| {
        harness::metric_sum(&metrics, &format!("{metric}{{grpc_method=\"{method}\""))
    };
    let watchers = harness::metric_sum(&metrics, "etcd_debugging_mvcc_watcher_total");
    eprintln!(
        "2 sets x {N}: keepalive streams {}, watch streams {}, watchers {watchers}",
        sum("grpc_server_started_total", "LeaseKeepAlive"),
        sum("grpc_server_started_total", "Watch")
    );
    assert!(sum("grpc_server_started_total", "LeaseKeepAlive") <= 2.0);
    assert!(sum("grpc_server_started_total", "Watch") <= 2.0);
    assert_eq!(watchers, (2 * N) as f64);

    // Names taken on a session: by the set, for another set or an elector; twice in one set.
    let taken = |r: crate::Result<()>| {
        let e = r.expect_err("taken");
        assert!(matches!(e, crate::Error::SessionTaken { .. }), "{e}");
    };
    taken(
        ElectionSet::new(&sa, "x", timing())
            .run(vec![names[7].clone()], CancellationToken::new())
            .map(drop),
    );
    taken(crate::Elector::new(sa.election(names[7].clone()), "x", timing()).map(drop));
    taken(
        ElectionSet::new(&sa, "x", timing())
            .run(vec!["d".into(), "d".into()], CancellationToken::new())
            .map(drop),
    );

    // A set's run dropped unpolled gives its names back.
    let free = || vec![format!("{base}-free")];
    let dropped = ElectionSet::new(&sa, "x", timing())
        .run(free(), CancellationToken::new())
        .unwrap();
    taken(crate::Elector::new(sa.election(free()[0].clone()), "x", timing()).map(drop));
    drop(dropped);
    drop(
        ElectionSet::new(&sa, "x", timing())
            .run(free(), CancellationToken::new())
            .unwrap(),
    );

    // set-a's lease revoked behind its back: every term on it ends, set-b takes over every
    // election with a larger token, and set-a queues again on a new lease.
    let firsts: std::collections::HashMap<usize, u64> = a
        .leading
        .iter()
        .map(|(i, l)| (*i, l.fencing_token().0))
        .collect();
    client.clone().lease_revoke(la).await.unwrap();
    let revoked = Instant::now();
    b.until(
        &mut rx_b,
        Duration::from_secs(20),
        "set-b takes over",
        |t| t.leading.len() == N,
    )
    .await;
    for (i, l) in &b.leading {
        assert!(l.fencing_token().0 > firsts[i]);
    }
    a.until(&mut rx_a, Duration::from_secs(10), "set-a stops", |t| {
        t.leading.is_empty()
    })
    .await;
    eprintln!(
        "lease revoked: set-b leads all {N} {:?} later",
        revoked.elapsed()
    );
    let until = Instant::now() + Duration::from_secs(10);
    while sa.lease().is_none_or(|l| l == la) {
        assert!(Instant::now() < until, "set-a has no new lease");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // Cut off from etcd: every term ends within the renew deadline (3 s), before the lease
    // (5 s) can expire.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let cut = Instant::now();
    etcd.stop();
    b.until(
        &mut rx_b,
        Duration::from_secs(5),
        "set-b's terms end",
        |t| t.leading.is_empty(),
    )
    .await;
    eprintln!(
        "etcd stopped: all {N} terms ended {:?} later",
        cut.elapsed()
    );
    assert!(cut.elapsed() < Duration::from_secs(5));
    etcd.restart().await;
    let back = Instant::now();
    let until = back + Duration::from_secs(30);
    loop {
        while let Ok(n) = rx_a.try_recv() {
            if let SetNote::Started(i, l) = n {
                a.leading.insert(i, l);
            }
        }
        while let Ok(n) = rx_b.try_recv() {
            if let SetNote::Started(i, l) = n {
                b.leading.insert(i, l);
            }
        }
        let leading = (0..N)
            .filter(|i| {
                a.leading.get(i).is_some_and(|l| !l.is_lost())
                    || b.leading.get(i).is_some_and(|l| !l.is_lost())
            })
            .count();
        if leading == N {
            break;
        }
        assert!(Instant::now() < until, "{leading} of {N} lead again");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "etcd back: every election leads again {:?} later",
        back.elapsed()
    );

    // Cancelled: every term ends and every key is deleted.
    cancel_a.cancel();
    cancel_b.cancel();
    run_a.await.unwrap();
    run_b.await.unwrap();
    for name in [&names[0], &names[N / 2], &names[N - 1]] {
        let e = EtcdElection::new(client.clone(), name.clone());
        assert_eq!(e.candidates().await.unwrap(), [], "{name}");
    }
    // Their names are free again.
    drop(crate::Elector::new(sa.election(names[7].clone()), "x", timing()).unwrap());
}
