//! `leasehold run`: contend, and run the command only while leading.

use crate::{
    args::{Backend, LockArgs, RunArgs},
    child::{self, Watchdog},
    supervisor::{Action, Event, Failure, Supervisor, Term, kill_grace},
};
#[cfg(feature = "etcd")]
use leasehold::backend::etcd::EtcdElection;
use leasehold::{
    Election, Elector, FencingToken, Leadership, LockBackend, backend::file::FileLock,
};
use std::{
    ops::ControlFlow,
    path::PathBuf,
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio::{
    signal::unix::{SignalKind, signal},
    sync::mpsc,
    time::{Instant, sleep_until},
};
use tokio_util::sync::CancellationToken;

/// Why `run` or `status` failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A flag or the configuration is wrong (exit 64).
    #[error("{0}")]
    Usage(String),
    /// The kubeconfig (named by `--kubeconfig`, or found through `KUBECONFIG` or at
    /// `~/.kube/config`) exists but is unusable (exit 64).
    #[error("invalid {from}")]
    Kubeconfig {
        /// Where it came from: `--kubeconfig`, or `kubeconfig` when found by default.
        from: &'static str,
        /// What is wrong with it.
        #[source]
        source: leasehold::backend::kubernetes::ClientError,
    },
    /// No Kubernetes client could be configured (exit 1).
    #[error("cannot configure a Kubernetes client")]
    Client(#[source] leasehold::backend::kubernetes::ClientError),
    /// The command after `--` cannot be run (exit 127 or 126, as shells do); found before
    /// contending, so a typo never takes the lease.
    #[error("cannot run `{command}`: {problem}")]
    Command {
        /// The program.
        command: String,
        /// What is wrong with it.
        problem: child::CommandProblem,
    },
    /// The command could not be started (exit 1). The lease was released first.
    #[error("cannot start `{command}`")]
    Spawn {
        /// The program.
        command: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The watchdog could not be started or died (exit 1).
    #[error("watchdog failed; the command was stopped")]
    Watchdog(#[source] std::io::Error),
    /// Signal handlers could not be installed (exit 1).
    #[error("cannot install signal handlers")]
    Signals(#[source] std::io::Error),
    /// `--http` could not listen (exit 1).
    #[error("--http {addr}: cannot listen")]
    Listen {
        /// The address.
        addr: std::net::SocketAddr,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The lock could not be read (`status`; exit 1).
    #[error("cannot read the lock")]
    Lock(#[source] leasehold::LockError),
    /// etcd cannot be used: refused credentials, denied access, a TLS mismatch, or (for
    /// `status`) unreachable (exit 1).
    #[cfg(feature = "etcd")]
    #[error("etcd at {endpoints}{hint}")]
    Etcd {
        /// The endpoints tried.
        endpoints: String,
        /// What the flags suggest about the cause, if anything (a leading space when not empty).
        hint: &'static str,
        /// What went wrong.
        #[source]
        source: leasehold::backend::etcd::Error,
    },
    /// `--route-service` cannot be set up (exit 1).
    #[error("leader routing")]
    Route(#[source] Box<crate::route::Error>),
    /// `step-down` failed (exit 1).
    #[error("step-down failed")]
    StepDown(#[source] Box<crate::step_down::Error>),
}

// === impl Error ===

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) | Self::Kubeconfig { .. } => 64,
            Self::Command { problem, .. } => problem.exit_code(),
            _ => 1,
        }
    }
}

/// The default record file for `--backend file`, and where its directory came from: in
/// `$XDG_RUNTIME_DIR` when set, else the temporary directory. Both may be private (to the user;
/// to each service under systemd's `PrivateTmp=` or in a container), so candidates of one
/// election run by other users or services may each get a file of their own and all lead:
/// [`open`] warns.
pub fn default_file(name: &str) -> (PathBuf, &'static str) {
    let file = format!("leasehold-{name}.json");
    if let Some(dir) = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
    {
        return (
            dir.join(file),
            "$XDG_RUNTIME_DIR, which is private to this user",
        );
    }
    // Where `temp_dir` looks, in its order.
    let from = if std::env::var_os("TMPDIR").is_some() {
        "$TMPDIR, which may be private to this user or this service"
    } else {
        "the temporary directory, which systemd's PrivateTmp= or a container makes private to \
         each service"
    };
    (std::env::temp_dir().join(file), from)
}

/// Checks `--file` before contending: the backend would otherwise retry a path that can never
/// work (no such directory, a directory, no permission) once per retry period, forever. `real`
/// is the path the backend uses (symbolic links followed): its directory is checked. With
/// `create` (for `run`), the sibling `REAL.lock` the backend locks with is created, which proves
/// the directory is writable.
fn check_file(path: &std::path::Path, real: &std::path::Path, create: bool) -> Result<(), Error> {
    let bad = |m: String| Err(Error::Usage(format!("--file {}: {m}", path.display())));
    if path.as_os_str().is_empty() {
        return Err(Error::Usage("--file: empty path".into()));
    }
    if real.is_dir() {
        return bad("is a directory; name a file in it".into());
    }
    let dir = match real.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => std::path::Path::new("."),
    };
    if !dir.is_dir() {
        return bad(format!("the directory {} does not exist", dir.display()));
    }
    if create {
        let mut lock = real.as_os_str().to_owned();
        lock.push(".lock");
        if let Err(e) = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock)
        {
            return bad(format!(
                "cannot create its lock file {}: {e}",
                std::path::Path::new(&lock).display()
            ));
        }
    }
    Ok(())
}

/// What the lock flags name, ready to elect on.
pub enum Opened {
    /// A lock record (file, Lease, annotations), with the Kubernetes client and namespace for
    /// the kube backend.
    Lock(Box<dyn LockBackend>, Option<(kube::Client, String)>),
    /// An etcd election (boxed: its client is several KiB).
    #[cfg(feature = "etcd")]
    Etcd(Box<EtcdElection>),
}

/// Builds the backend from the lock flags. `contend`: for `run` (the lock will be written),
/// not `status`. `events`: record Events on the lock object.
pub async fn open(lock: &LockArgs, contend: bool, events: bool) -> Result<Opened, Error> {
    match lock.backend {
        Backend::File => {
            let path = match &lock.file {
                Some(path) => path.clone(),
                None => {
                    let (path, from) = default_file(&lock.name);
                    // Another candidate of this election that sees another directory there
                    // holds another lock, and both lead: say so where the operator looks.
                    tracing::warn!(
                        file = %path.display(),
                        "no --file given: the lock file is in {from}; candidates run by another \
                         user, or in another service or container, may each get a file of their \
                         own there and lead at the same time; pass --file with a path they all \
                         share"
                    );
                    path
                }
            };
            let backend = FileLock::new(&path);
            let real = backend.resolved_path().map_err(|e| {
                // Its message without the object, which names this same path.
                let why = match &e {
                    leasehold::LockError::Other { message, .. } => message.clone(),
                    other => other.to_string(),
                };
                Error::Usage(format!("--file {}: {why}", path.display()))
            })?;
            check_file(&path, &real, contend)?;
            Ok(Opened::Lock(Box::new(backend), None))
        }
        #[cfg(not(feature = "etcd"))]
        Backend::Etcd => Err(Error::Usage(
            "--backend etcd: this leasehold was built without the etcd backend (cargo feature \
             `etcd`, which the Kubernetes image leaves out); use the full build \
             (scripts/build-dist.sh, or cargo build -p leasehold-cli --features etcd)"
                .into(),
        )),
        #[cfg(feature = "etcd")]
        Backend::Etcd => {
            let etcd = lock.etcd.as_ref().expect("parsed with --backend etcd");
            crate::etcd::connect(&lock.name, etcd, contend)
                .await
                .map(|e| Opened::Etcd(Box::new(e)))
        }
        Backend::Kube => {
            use leasehold::backend::kubernetes as k8s;
            let client = k8s::client_with_http2(lock.kubeconfig.as_deref())
                .await
                .map_err(|e| match e {
                    k8s::ClientError::Kubeconfig { .. } => Error::Kubeconfig {
                        from: if lock.kubeconfig.is_some() {
                            "--kubeconfig"
                        } else {
                            "kubeconfig"
                        },
                        source: e,
                    },
                    _ => Error::Client(e),
                })?;
            let ns = lock
                .namespace
                .clone()
                .unwrap_or_else(k8s::default_namespace);
            let backend = k8s::KubeLock::new(client.clone(), lock.lock_type, &ns, &lock.name)
                .with_events(events);
            Ok(Opened::Lock(Box::new(backend), Some((client.into(), ns))))
        }
    }
}

/// This candidate's identity: `--id`, else `$HOSTNAME`, else the host name; with the file
/// backend and no `--id`, `-PID` is appended so candidates on one host differ.
pub fn identity(args: &RunArgs) -> String {
    if let Some(id) = &args.id {
        return id.clone();
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| {
            rustix::system::uname()
                .nodename()
                .to_string_lossy()
                .into_owned()
        });
    match args.lock.backend {
        Backend::File | Backend::Etcd => format!("{host}-{}", std::process::id()),
        Backend::Kube => host,
    }
}

enum Note {
    Leader(String),
}

/// Runs the election, and the command while leading. Returns the exit code.
///
/// # Errors
/// See [`Error`].
pub async fn run(args: RunArgs) -> Result<i32, Error> {
    if let Some(program) = args.command.first() {
        child::check_program(program).map_err(|problem| Error::Command {
            command: program.to_string_lossy().into_owned(),
            problem,
        })?;
    }
    let identity = identity(&args);
    match open(&args.lock, true, !args.sidecar.no_events).await? {
        Opened::Lock(backend, kube) => run_on(backend, kube, args, identity).await,
        #[cfg(feature = "etcd")]
        Opened::Etcd(election) => run_on(*election, None, args, identity).await,
    }
}

/// Keeps the Pod's role label (and, unless turned off, its deletion cost) at the latest wanted
/// value, retrying until it sticks.
struct Labeler {
    want: tokio::sync::watch::Sender<&'static str>,
    applied: tokio::sync::watch::Receiver<Option<&'static str>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl Labeler ===

impl Labeler {
    fn start(
        client: kube::Client,
        namespace: String,
        pod: String,
        key: String,
        deletion_cost: bool,
    ) -> Self {
        let (want, mut want_rx) = tokio::sync::watch::channel("standby");
        let (applied_tx, applied) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                let value = *want_rx.borrow_and_update();
                if *applied_tx.borrow() != Some(value) {
                    use leasehold::backend::kubernetes::{
                        LEADER_DELETION_COST, POD_DELETION_COST, patch_pod_metadata,
                    };
                    // The leader's Pod goes last when its ReplicaSet scales down; a standby's
                    // has no cost of its own (0).
                    let cost = (value == "leader").then_some(LEADER_DELETION_COST);
                    let annotations: &[(&str, Option<&str>)] = if deletion_cost {
                        &[(POD_DELETION_COST, cost)]
                    } else {
                        &[]
                    };
                    match patch_pod_metadata(
                        &client,
                        &namespace,
                        &pod,
                        &[(key.as_str(), Some(value))],
                        annotations,
                    )
                    .await
                    {
                        Ok(()) => {
                            tracing::info!(pod = %pod, label = %format!("{key}={value}"), deletion_cost = ?annotations.first().and_then(|a| a.1), "labelled Pod");
                            last_error = None;
                            applied_tx.send_replace(Some(value));
                        }
                        Err(e) => {
                            let msg = leasehold::display_chain(&e);
                            if last_error.as_deref() != Some(msg.as_str()) {
                                tracing::warn!(error = %msg, "cannot label the Pod; retrying every second");
                                last_error = Some(msg);
                            }
                            tokio::time::sleep(Duration::from_secs(1)).await;
                            continue;
                        }
                    }
                }
                if want_rx.changed().await.is_err() {
                    return;
                }
            }
        });
        Self {
            want,
            applied,
            task,
        }
    }

    fn set(&self, value: &'static str) {
        self.want.send_replace(value);
    }

    /// Sets `value` and waits (at most `limit`) until the Pod carries it.
    async fn flush(&mut self, value: &'static str, limit: Duration) {
        self.set(value);
        let _ = tokio::time::timeout(limit, self.applied.wait_for(|v| *v == Some(value))).await;
    }
}

async fn run_on<B: Election>(
    backend: B,
    kube: Option<(kube::Client, String)>,
    args: RunArgs,
    identity: String,
) -> Result<i32, Error> {
    let timing = args.timing.clone();
    let timing_c = timing.clone();
    let grace = kill_grace(&timing);
    tracing::info!(
        lock = %backend.describe(), identity = %identity,
        lease_duration = ?timing.lease_duration, renew_deadline = ?timing.renew_deadline,
        retry_period = ?timing.retry_period, kill_grace = ?grace,
        command = ?args.command,
        // Kubernetes only: elsewhere there is no lock type, and no Events are recorded.
        lock_type = %kube.as_ref().map_or_else(|| "-".to_owned(), |_| args.lock.lock_type.to_string()),
        http = ?args.sidecar.http, ready_when = ?args.sidecar.ready_when,
        pod_label = ?args.sidecar.pod_name.as_ref().map(|p| format!("{p}: {}", args.sidecar.label_key)),
        events = kube.is_some() && !args.sidecar.no_events, "leasehold starting"
    );
    let labeler = match (&kube, &args.sidecar.pod_name) {
        (Some((client, ns)), Some(pod)) => Some(Labeler::start(
            client.clone(),
            ns.clone(),
            pod.clone(),
            args.sidecar.label_key.clone(),
            !args.sidecar.no_deletion_cost,
        )),
        _ => None,
    };

    let router = match (&kube, &args.sidecar.route) {
        (Some((client, ns)), Some((service, ip))) => Some(
            crate::route::Router::new(
                client.clone(),
                ns,
                service,
                *ip,
                args.sidecar.pod_name.as_deref(),
            )
            .await
            .map_err(|e| Error::Route(Box::new(e)))?,
        ),
        _ => None,
    };

    let (lead_tx, lead_rx) = mpsc::unbounded_channel::<Leadership>();
    let (note_tx, note_rx) = mpsc::unbounded_channel::<Note>();
    let config = leasehold::Config::new(identity.clone()).timing(timing_c);
    let elector = Elector::with_config(backend, config)
        .map_err(|e| Error::Usage(format!("{e}: {}", leasehold_error_source(&e))))?
        .on_new_leader(move |who| {
            let _ = note_tx.send(Note::Leader(who.to_owned()));
        })
        .with_clock_offset(args.clock_offset.unwrap_or(jiff::SignedDuration::ZERO));
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let term: Arc<Mutex<Option<Leadership>>> = Arc::default();
    let elector_dead = Arc::new(AtomicBool::new(false));
    let mut tasks = Vec::new();
    let listeners = [(args.sidecar.http, false), (args.sidecar.control, true)];
    for (addr, control) in listeners {
        let Some(addr) = addr else { continue };
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .map_err(|source| Error::Listen { addr, source })?;
        if control {
            tracing::info!(%addr, "serving POST /step-down (and the status endpoints)");
        } else {
            tracing::info!(%addr, "serving /, /healthz, /readyz, /metrics");
        }
        let state = crate::http::State {
            handle: handle.clone(),
            term: Arc::clone(&term),
            elector_dead: Arc::clone(&elector_dead),
            name: args.lock.name.clone(),
            namespace: kube.as_ref().map(|(_, ns)| ns.clone()).unwrap_or_default(),
            identity: identity.clone(),
            ready_when: args.sidecar.ready_when,
            healthz_grace: timing
                .lease_duration
                .saturating_sub(timing.renew_deadline)
                .max(Duration::from_secs(1)),
            control,
            default_hold_off: timing.lease_duration,
        };
        tasks.push(tokio::spawn(crate::http::serve(listener, state)));
    }
    if let Some(health) = args.health.clone() {
        tracing::info!(
            ?health,
            "health-gated candidacy: contending only while the probe passes"
        );
        tasks.push(tokio::spawn(crate::health::run(health, handle.clone())));
    }
    // Each term's work hands the term to the run loop, and ends once the supervisor says the
    // command is gone for it: only then does the elector release the lock.
    let (drained_tx, drained_rx) = tokio::sync::watch::channel(None::<FencingToken>);
    let elector_task = tokio::spawn(elector.run_while_leading(cancel.clone(), move |l| {
        let _ = lead_tx.send(l.clone());
        let mut drained = drained_rx.clone();
        async move {
            l.lost().await;
            let token = l.fencing_token();
            // A closed channel: the run loop has ended, and with it the command.
            let _ = drained.wait_for(|d| d.is_some_and(|d| d >= token)).await;
        }
    }));

    let sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;

    let mut supervisor = Supervisor::new(identity.clone(), !args.command.is_empty(), grace);
    let mut shell = Shell {
        name: args.lock.name.clone(),
        identity,
        command: args.command,
        grace,
        labeler,
        router,
        cancel,
        elector_task,
        tasks,
        elector_dead,
        term,
        sigterm,
        sigint,
        lead_rx,
        note_rx,
        current: None,
        lost: None,
        until: None,
        child: None,
        outcome: None,
    };
    loop {
        let event = shell.next(supervisor.deadline()).await;
        let actions = supervisor.handle(event, Instant::now());
        // Before the actions: one of them may wait for the elector, which waits for this.
        let drained = supervisor.drained();
        drained_tx.send_if_modified(|d| {
            let moved = *d != drained && drained.is_some();
            if moved {
                *d = drained;
            }
            moved
        });
        for action in actions {
            if let ControlFlow::Break(result) = shell.execute(action).await {
                return result;
            }
        }
    }
}

fn leasehold_error_source(e: &leasehold::Error) -> String {
    use std::error::Error as _;
    e.source().map(ToString::to_string).unwrap_or_default()
}

/// Which of the command's two processes ended.
enum Ended {
    Child(std::io::Result<std::process::ExitStatus>),
    Watchdog(std::io::Result<std::process::ExitStatus>),
}

/// The running command: its process, group and watchdog.
struct ChildProc {
    process: tokio::process::Child,
    pgid: u32,
    /// `None` only when the watchdog could not be started; the child is then reaped at once.
    watchdog: Option<Watchdog>,
    /// The watchdog has exited (after its deadline it kills the group and exits).
    watchdog_exited: bool,
}

// === impl ChildProc ===

impl ChildProc {
    /// Completes when the child exits, or its watchdog does first.
    async fn ended(&mut self) -> Ended {
        let Self {
            process,
            watchdog,
            watchdog_exited,
            ..
        } = self;
        let watching = !*watchdog_exited && watchdog.is_some();
        tokio::select! {
            biased;
            status = process.wait() => Ended::Child(status),
            status = async { watchdog.as_mut().expect("guarded").exited().await }, if watching => Ended::Watchdog(status),
        }
    }
}

/// The current term's deadline as it moves, and the value last reported to the supervisor
/// (the one the watchdog is given).
struct Until {
    token: FencingToken,
    rx: tokio::sync::watch::Receiver<leasehold::Deadline>,
    last: leasehold::Deadline,
}

/// The run loop's side of the [`Supervisor`]: the sources its events come from and what its
/// actions act on. It decides nothing.
struct Shell {
    name: String,
    identity: String,
    command: Vec<std::ffi::OsString>,
    grace: Duration,
    labeler: Option<Labeler>,
    router: Option<crate::route::Router>,
    cancel: CancellationToken,
    elector_task: tokio::task::JoinHandle<()>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
    elector_dead: Arc<AtomicBool>,
    /// The current term, for the HTTP state.
    term: Arc<Mutex<Option<Leadership>>>,
    sigterm: tokio::signal::unix::Signal,
    sigint: tokio::signal::unix::Signal,
    lead_rx: mpsc::UnboundedReceiver<Leadership>,
    note_rx: mpsc::UnboundedReceiver<Note>,
    /// The latest term.
    current: Option<Leadership>,
    /// The latest term's end, until reported.
    lost: Option<(FencingToken, CancellationToken)>,
    until: Option<Until>,
    child: Option<ChildProc>,
    /// The outcome of the last action (spawned, reaped...), to hand over next.
    outcome: Option<Event>,
}

// === impl Shell ===

impl Shell {
    /// Waits for the next event. A change to the current term comes first, then the outcome
    /// of the last action: the supervisor so decides on facts as fresh as a live read.
    async fn next(&mut self, timer: Option<Instant>) -> Event {
        let Self {
            lost,
            until,
            outcome,
            sigterm,
            sigint,
            lead_rx,
            note_rx,
            child,
            elector_task,
            current,
            term,
            ..
        } = self;
        tokio::select! {
            biased;
            _ = async { lost.as_ref().expect("guarded").1.cancelled().await }, if lost.is_some() => {
                let (token, _) = lost.take().expect("guarded");
                Event::TermLost { token }
            }
            Ok(()) = async { until.as_mut().expect("guarded").rx.changed().await }, if until.is_some() => {
                let u = until.as_mut().expect("guarded");
                u.last = *u.rx.borrow_and_update();
                Event::DeadlineMoved { token: u.token, valid_until: u.last.at }
            }
            Some(event) = async { outcome.take() }, if outcome.is_some() => event,
            _ = sigterm.recv() => Event::Signal("SIGTERM"),
            _ = sigint.recv() => Event::Signal("SIGINT"),
            Some(l) = lead_rx.recv() => {
                if let Ok(mut t) = term.lock() {
                    *t = Some(l.clone());
                }
                // One receiver per term (a fresh clone would report the value as changed every
                // time), read as it is subscribed: a renewal after this is seen as a change.
                let mut rx = l.subscribe_deadline();
                let last = *rx.borrow_and_update();
                let token = l.fencing_token();
                let reported = Term { token, valid_until: last.at, lost: l.is_lost() };
                *lost = Some((token, l.token()));
                *until = Some(Until { token, rx, last });
                *current = Some(l);
                Event::Leading(reported)
            }
            Some(Note::Leader(who)) = note_rx.recv() => Event::NewLeader(who),
            () = async { sleep_until(timer.expect("guarded")).await }, if timer.is_some() => Event::Timer,
            ended = async { child.as_mut().expect("guarded").ended().await }, if child.is_some() => {
                let c = child.as_mut().expect("guarded");
                match ended {
                    Ended::Child(status) => Event::ChildExited {
                        status,
                        watchdog_fired: c.watchdog.as_mut().is_some_and(Watchdog::fired),
                    },
                    Ended::Watchdog(status) => {
                        c.watchdog_exited = true;
                        Event::WatchdogExited(status)
                    }
                }
            }
            _ = elector_task => Event::ElectorEnded,
        }
    }

    /// Executes one action; `Break` with the run's result at its end.
    async fn execute(&mut self, action: Action) -> ControlFlow<Result<i32, Error>> {
        use rustix::process::Signal;
        match action {
            Action::Spawn { token } => self.outcome = Some(self.spawn(token).await),
            Action::Terminate => self.signal_child(Signal::TERM),
            Action::Kill => self.signal_child(Signal::KILL),
            Action::ExtendWatchdog(at) => {
                if let (Some(w), Some(u)) = (
                    self.child.as_mut().and_then(|c| c.watchdog.as_mut()),
                    &self.until,
                ) {
                    debug_assert_eq!(u.last.at, at);
                    if let Err(e) = w.extend(u.last).await {
                        self.outcome = Some(Event::ExtendFailed(e));
                    }
                }
            }
            Action::Reap => self.outcome = Some(self.reap().await),
            Action::StopChild => {
                if let Some(mut c) = self.child.take() {
                    kill_group(c.pgid, Signal::KILL);
                    let _ = c.process.wait().await;
                    if !child::wait_group_gone(c.pgid, self.grace.max(Duration::from_secs(1))).await
                    {
                        tracing::error!(
                            pgid = c.pgid,
                            "processes of the command's group survive SIGKILL (uninterruptible sleep?)"
                        );
                    }
                    if let Some(w) = c.watchdog {
                        w.finish().await;
                    }
                }
            }
            Action::Announce { token } => {
                if let Some(lb) = &self.labeler
                    && let Some(l) = self.current.as_ref().filter(|l| l.fencing_token() == token)
                {
                    lb.set("leader");
                    let want = lb.want.clone();
                    let ended = l.clone();
                    tokio::spawn(async move {
                        ended.lost().await;
                        want.send_replace("standby");
                    });
                }
                if let Some(r) = &self.router
                    && let Some(l) = self.current.as_ref().filter(|l| l.fencing_token() == token)
                {
                    tokio::spawn(r.clone().route(l.clone()));
                }
            }
            Action::Unlabel => {
                if let Some(l) = self.labeler.as_mut() {
                    l.flush("standby", Duration::from_secs(2)).await;
                }
            }
            Action::Cancel => self.cancel.cancel(),
            Action::AbortElector => {
                self.elector_task.abort();
                self.cancel.cancel();
            }
            Action::AwaitElector => {
                let _ = (&mut self.elector_task).await;
            }
            Action::ElectorDead => self.elector_dead.store(true, Ordering::Relaxed),
            Action::StopTasks => {
                if let Some(l) = self.labeler.take() {
                    l.task.abort();
                }
                for t in &self.tasks {
                    t.abort();
                }
            }
            Action::Say(line) => say!("{line}"),
            Action::Exit(code) => return ControlFlow::Break(Ok(code)),
            Action::Fail(Failure::Spawn(source)) => {
                let command = self.command[0].to_string_lossy().into_owned();
                return ControlFlow::Break(Err(Error::Spawn { command, source }));
            }
            Action::Fail(Failure::Watchdog(e)) => {
                return ControlFlow::Break(Err(Error::Watchdog(e)));
            }
        }
        ControlFlow::Continue(())
    }

    fn signal_child(&self, sig: rustix::process::Signal) {
        if let Some(c) = &self.child {
            kill_group(c.pgid, sig);
        }
    }

    /// [`Action::Spawn`]: the command with its leadership in its environment, then its
    /// watchdog with the term's deadline last reported to the supervisor (a later one reaches
    /// the watchdog as [`Event::DeadlineMoved`]).
    async fn spawn(&mut self, token: FencingToken) -> Event {
        let Some(until) = self
            .until
            .as_ref()
            .filter(|u| u.token == token)
            .map(|u| u.last)
        else {
            return Event::SpawnFailed(std::io::Error::other("the term is not the current one"));
        };
        let env = [
            ("LEASEHOLD_NAME", self.name.clone()),
            ("LEASEHOLD_IDENTITY", self.identity.clone()),
            ("LEASEHOLD_FENCING_TOKEN", token.to_string()),
        ];
        let process = match child::spawn(&self.command, &env) {
            Ok(process) => process,
            Err(e) => return Event::SpawnFailed(e),
        };
        let pgid = process.id().unwrap_or_default();
        let (watchdog, event) = match Watchdog::start(pgid, self.grace, until).await {
            Ok(w) => (Some(w), Event::Spawned { pgid }),
            Err(error) => (None, Event::WatchdogFailed { pgid, error }),
        };
        self.child = Some(ChildProc {
            process,
            pgid,
            watchdog,
            watchdog_exited: false,
        });
        event
    }

    /// [`Action::Reap`]: SIGKILL the group, wait for the child, then until nothing of the
    /// group is left (its own children share it and may outlive it), then finish the watchdog.
    async fn reap(&mut self) -> Event {
        let Some(mut c) = self.child.take() else {
            return Event::GroupGone;
        };
        kill_group(c.pgid, rustix::process::Signal::KILL);
        let _ = c.process.wait().await;
        let gone = child::wait_group_gone(c.pgid, self.grace.max(Duration::from_secs(1))).await;
        if let Some(w) = c.watchdog {
            w.finish().await;
        }
        if gone {
            Event::GroupGone
        } else {
            Event::GroupSurvives
        }
    }
}

fn kill_group(pgid: u32, sig: rustix::process::Signal) {
    if let Some(pid) = i32::try_from(pgid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
    {
        let _ = rustix::process::kill_process_group(pid, sig);
    }
}
