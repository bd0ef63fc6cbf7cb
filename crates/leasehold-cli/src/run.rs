//! `leasehold run`: contend, and run the command only while leading.

use crate::{
    args::{Backend, LockArgs, RunArgs},
    child::{self, Watchdog},
};
use leasehold::{Elector, Leadership, LockBackend, backend::file::FileLock};
use std::{
    os::unix::process::ExitStatusExt as _,
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
/// [`with_backend`] warns.
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

/// Builds the backend from the lock flags and hands it to `f`, with the Kubernetes client and
/// namespace for the kube backend. `contend`: for `run` (the lock will be written), not
/// `status`. `events`: record Events on the lock object.
pub async fn with_backend<R>(
    lock: &LockArgs,
    contend: bool,
    events: bool,
    f: impl AsyncFnOnce(Box<dyn LockBackend>, Option<(kube::Client, String)>) -> Result<R, Error>,
) -> Result<R, Error> {
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
            f(Box::new(backend), None).await
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
            f(Box::new(backend), Some((client.into(), ns))).await
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
        Backend::File => format!("{host}-{}", std::process::id()),
        Backend::Kube => host,
    }
}

enum Note {
    Leader(String),
}

enum Ended {
    Child(std::io::Result<std::process::ExitStatus>),
    Watchdog(std::io::Result<std::process::ExitStatus>),
}

struct Running {
    child: tokio::process::Child,
    pgid: u32,
    watchdog: Watchdog,
    leadership: Leadership,
    /// Set once SIGTERM was sent: when to send SIGKILL.
    kill_at: Option<Instant>,
    /// The watchdog has exited (after its deadline it kills the group and exits).
    watchdog_exited: bool,
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
    let lock = args.lock.clone();
    with_backend(
        &lock,
        true,
        !args.sidecar.no_events,
        async move |backend, kube| run_on(backend, kube, args, identity).await,
    )
    .await
}

/// Keeps the Pod's role label at the latest wanted value, retrying until it sticks.
struct Labeler {
    want: tokio::sync::watch::Sender<&'static str>,
    applied: tokio::sync::watch::Receiver<Option<&'static str>>,
    task: tokio::task::JoinHandle<()>,
}

// === impl Labeler ===

impl Labeler {
    fn start(client: kube::Client, namespace: String, pod: String, key: String) -> Self {
        let (want, mut want_rx) = tokio::sync::watch::channel("standby");
        let (applied_tx, applied) = tokio::sync::watch::channel(None);
        let task = tokio::spawn(async move {
            let mut last_error: Option<String> = None;
            loop {
                let value = *want_rx.borrow_and_update();
                if *applied_tx.borrow() != Some(value) {
                    match leasehold::backend::kubernetes::set_pod_label(
                        &client, &namespace, &pod, &key, value,
                    )
                    .await
                    {
                        Ok(()) => {
                            tracing::info!(pod = %pod, label = %format!("{key}={value}"), "labelled Pod");
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

async fn run_on(
    backend: Box<dyn LockBackend>,
    kube: Option<(kube::Client, String)>,
    args: RunArgs,
    identity: String,
) -> Result<i32, Error> {
    let timing = args.timing.clone();
    let timing_c = timing.clone();
    // SIGKILL lands before others could take over: the step-down happens at renew deadline,
    // others wait a full lease duration; SIGKILL comes halfway through that margin.
    let grace = (timing.lease_duration.saturating_sub(timing.renew_deadline)) / 2;
    tracing::info!(
        lock = %backend.describe(), identity = %identity,
        lease_duration = ?timing.lease_duration, renew_deadline = ?timing.renew_deadline,
        retry_period = ?timing.retry_period, kill_grace = ?grace,
        command = ?args.command, lock_type = %args.lock.lock_type,
        http = ?args.sidecar.http, ready_when = ?args.sidecar.ready_when,
        pod_label = ?args.sidecar.pod_name.as_ref().map(|p| format!("{p}: {}", args.sidecar.label_key)),
        events = !args.sidecar.no_events, "leasehold starting"
    );
    let mut labeler = match (&kube, &args.sidecar.pod_name) {
        (Some((client, ns)), Some(pod)) => Some(Labeler::start(
            client.clone(),
            ns.clone(),
            pod.clone(),
            args.sidecar.label_key.clone(),
        )),
        _ => None,
    };

    let (lead_tx, mut lead_rx) = mpsc::unbounded_channel::<Leadership>();
    let (note_tx, mut note_rx) = mpsc::unbounded_channel::<Note>();
    let config = leasehold::Config::new(identity.clone()).timing(timing_c);
    let elector = Elector::with_config(backend, config)
        .map_err(|e| Error::Usage(format!("{e}: {}", leasehold_error_source(&e))))?
        .on_started_leading(move |l| {
            let _ = lead_tx.send(l);
        })
        .on_new_leader(move |who| {
            let _ = note_tx.send(Note::Leader(who.to_owned()));
        })
        .with_clock_offset(args.clock_offset.unwrap_or(jiff::SignedDuration::ZERO));
    let handle = elector.handle();
    let cancel = CancellationToken::new();
    let term: Arc<Mutex<Option<Leadership>>> = Arc::default();
    let elector_dead = Arc::new(AtomicBool::new(false));
    let http_task = match args.sidecar.http {
        Some(addr) => {
            let listener = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Listen { addr, source })?;
            tracing::info!(%addr, "serving /, /healthz, /readyz, /metrics");
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
            };
            Some(tokio::spawn(crate::http::serve(listener, state)))
        }
        None => None,
    };
    let mut elector_task = tokio::spawn(elector.run(cancel.clone()));
    // Set when the lease should be released: the Pod label goes to standby first.
    let mut want_release = false;

    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;

    let name = args.lock.name.clone();
    let mut running: Option<Running> = None;
    // The current child's term deadline, as it moves; one receiver per child (a fresh clone
    // would report the value as changed every time).
    let mut until_rx: Option<tokio::sync::watch::Receiver<leasehold::Deadline>> = None;
    let mut current: Option<Leadership> = None;
    let mut shutting_down = false;
    let mut exit_code = 0;
    // An error to return once the lease is released.
    let mut fatal: Option<Error> = None;
    let far = || Instant::now() + Duration::from_secs(86_400);

    loop {
        if want_release && !cancel.is_cancelled() {
            // Unlabel before releasing, so a Service on the label never selects two Pods
            // during a graceful handover.
            if let Some(l) = labeler.as_mut() {
                l.flush("standby", Duration::from_secs(2)).await;
            }
            cancel.cancel();
        }
        // Start the command when leading and no earlier child is left.
        if running.is_none()
            && !shutting_down
            && !args.command.is_empty()
            && let Some(l) = current
                .as_ref()
                .filter(|l| !l.is_lost() && l.valid_until() > Instant::now())
        {
            let env = [
                ("LEASEHOLD_NAME", name.clone()),
                ("LEASEHOLD_IDENTITY", identity.clone()),
                ("LEASEHOLD_FENCING_TOKEN", l.fencing_token().to_string()),
            ];
            let child = match child::spawn(&args.command, &env) {
                Ok(child) => child,
                Err(source) => {
                    // Nobody acts on this term: release it now rather than make the others
                    // wait a lease duration, then report why.
                    fatal = Some(Error::Spawn {
                        command: args.command[0].to_string_lossy().into_owned(),
                        source,
                    });
                    shutting_down = true;
                    want_release = true;
                    continue;
                }
            };
            let pgid = child.id().unwrap_or_default();
            // Subscribe before reading the deadline, and hand the watchdog the value read: a
            // renewal that lands in between is then seen as a change, never swallowed.
            let mut rx = l.subscribe_deadline();
            let deadline = *rx.borrow_and_update();
            let watchdog = match Watchdog::start(pgid, grace, deadline).await {
                Ok(w) => w,
                Err(e) => {
                    // Never leave a child running without its guard.
                    let mut child = child;
                    kill_group(pgid, rustix::process::Signal::KILL);
                    let _ = child.wait().await;
                    if !child::wait_group_gone(pgid, grace.max(Duration::from_secs(1))).await {
                        // As below: survivors may still act, so no release; the lease expires.
                        tracing::error!(
                            pgid,
                            "processes of the command's group survive SIGKILL; not releasing the lease"
                        );
                        elector_task.abort();
                    }
                    cancel.cancel();
                    let _ = (&mut elector_task).await;
                    return Err(Error::Watchdog(e));
                }
            };
            tracing::info!(pid = pgid, fencing_token = %l.fencing_token(), "started command");
            until_rx = Some(rx);
            running = Some(Running {
                child,
                pgid,
                watchdog,
                leadership: l.clone(),
                kill_at: None,
                watchdog_exited: false,
            });
        }
        let lost = running.as_ref().map(|r| r.leadership.token());
        let kill_at = running.as_ref().and_then(|r| r.kill_at).unwrap_or_else(far);

        tokio::select! {
            biased;
            _ = async { sigterm.recv().await }, if true => on_signal(&mut shutting_down, &mut running, &mut want_release, &cancel, grace, "SIGTERM"),
            _ = sigint.recv() => on_signal(&mut shutting_down, &mut running, &mut want_release, &cancel, grace, "SIGINT"),
            Some(l) = lead_rx.recv() => {
                say!("leading: {identity} (fencing token {})", l.fencing_token());
                if let Some(lb) = &labeler {
                    lb.set("leader");
                    // Back to standby the moment this term ends, however it ends.
                    let want = lb.want.clone();
                    let ended = l.clone();
                    tokio::spawn(async move {
                        ended.lost().await;
                        want.send_replace("standby");
                    });
                }
                if let Ok(mut t) = term.lock() {
                    *t = Some(l.clone());
                }
                current = Some(l);
            }
            Some(Note::Leader(who)) = note_rx.recv() => {
                if who.is_empty() {
                    say!("released: no leader");
                } else if who != identity {
                    say!("leader: {who}");
                }
            }
            _ = async { lost.as_ref().expect("guarded").cancelled().await }, if lost.is_some() && running.as_ref().is_some_and(|r| r.kill_at.is_none()) => {
                if let Some(r) = running.as_mut() {
                    tracing::warn!(pid = r.pgid, "leadership ended; stopping command (SIGTERM)");
                    terminate(r, grace);
                }
            }
            Ok(()) = async { until_rx.as_mut().expect("guarded").changed().await }, if until_rx.is_some() => {
                if let Some(r) = running.as_mut() {
                    let until = *until_rx.as_mut().expect("guarded").borrow_and_update();
                    if let Err(e) = r.watchdog.extend(until).await {
                        // Without a working watchdog a frozen leasehold could not stop the
                        // child in time: stop it now, and exit.
                        tracing::error!(error = %e, "watchdog is gone or unresponsive; stopping command");
                        kill(r);
                        shutting_down = true;
                        exit_code = 1;
                    }
                }
            }
            _ = sleep_until(kill_at), if running.as_ref().is_some_and(|r| r.kill_at.is_some()) => {
                if let Some(r) = running.as_mut() {
                    tracing::warn!(pid = r.pgid, "command still running after SIGTERM; SIGKILL");
                    kill(r);
                    r.kill_at = Some(far());
                }
            }
            ended = async {
                let r = running.as_mut().expect("guarded");
                tokio::select! {
                    biased;
                    status = r.child.wait() => Ended::Child(status),
                    status = r.watchdog.exited(), if !r.watchdog_exited => Ended::Watchdog(status),
                }
            }, if running.is_some() => {
                let status = match ended {
                    Ended::Child(status) => status,
                    Ended::Watchdog(status) => {
                        let Some(r) = running.as_mut() else { continue };
                        r.watchdog_exited = true;
                        kill(r);
                        if matches!(&status, Ok(s) if s.code() == Some(crate::watchdog::DEADLINE_EXIT)) {
                            // Its deadline passed while this process could not act (frozen or
                            // stalled): it killed the group, as designed.
                            tracing::warn!("watchdog stopped the command at the term's deadline");
                        } else {
                            // The watchdog must outlive the child; without it the frozen-elector
                            // guarantee is gone, so stop the child and exit.
                            tracing::error!(?status, "watchdog exited unexpectedly; stopped the command");
                            if !shutting_down {
                                shutting_down = true;
                                exit_code = 1;
                            }
                        }
                        continue;
                    }
                };
                let mut r = running.take().expect("guarded");
                until_rx = None;
                // The term was over if the watchdog fired or its deadline passed, even if this
                // process (frozen until now) has not heard of the step-down yet.
                let term_over = r.leadership.is_lost()
                    || r.watchdog.fired()
                    || Instant::now() >= r.leadership.valid_until();
                // Nothing of the group may be left before anyone else may start, or a new child.
                kill_group(r.pgid, rustix::process::Signal::KILL);
                if !child::wait_group_gone(r.pgid, grace.max(Duration::from_secs(1))).await {
                    // They may still finish a write (uninterruptible sleep): never hand the
                    // lease over early. Without a release the others wait out the lease, by
                    // which time the step-down's margin has passed as well.
                    // Nor may a new term start a second child beside them: stop contending.
                    // Ending the election task (not cancelling it) skips the release.
                    tracing::error!(pgid = r.pgid, "processes of the command's group survive SIGKILL (uninterruptible sleep?); not releasing the lease (it expires instead) and exiting");
                    elector_task.abort();
                    cancel.cancel();
                    shutting_down = true;
                    exit_code = 1;
                    r.watchdog.finish().await;
                    continue;
                }
                r.watchdog.finish().await;
                let code = match &status {
                    Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                    Err(_) => 1,
                };
                if r.kill_at.is_some() || term_over || shutting_down {
                    tracing::info!(code, "command stopped");
                    say!("stopped leading: {identity}");
                    if shutting_down {
                        want_release = true;
                    }
                } else {
                    // It ended by itself: release and exit with its code.
                    tracing::info!(code, "command exited; releasing the lease");
                    exit_code = code;
                    shutting_down = true;
                    want_release = true;
                }
            }
            _ = &mut elector_task => {
                if !cancel.is_cancelled() {
                    elector_dead.store(true, Ordering::Relaxed);
                    tracing::error!("the election task ended unexpectedly");
                    exit_code = 1;
                }
                if let Some(mut r) = running.take() {
                    kill(&mut r);
                    let _ = r.child.wait().await;
                    r.watchdog.finish().await;
                }
                if let Some(mut l) = labeler.take() {
                    l.flush("standby", Duration::from_secs(2)).await;
                    l.task.abort();
                }
                if let Some(t) = &http_task {
                    t.abort();
                }
                if let Some(l) = current.as_ref().filter(|_| args.command.is_empty()) {
                    say!("stopped leading: {identity} (fencing token {})", l.fencing_token());
                }
                if let Some(e) = fatal {
                    return Err(e);
                }
                return Ok(exit_code);
            }
        }
        // Without a command, report the end of a term as it happens.
        if args.command.is_empty()
            && let Some(l) = current.as_ref().filter(|l| l.is_lost())
        {
            say!(
                "stopped leading: {identity} (fencing token {})",
                l.fencing_token()
            );
            current = None;
        }
    }
}

fn leasehold_error_source(e: &leasehold::Error) -> String {
    use std::error::Error as _;
    e.source().map(ToString::to_string).unwrap_or_default()
}

fn on_signal(
    shutting_down: &mut bool,
    running: &mut Option<Running>,
    want_release: &mut bool,
    cancel: &CancellationToken,
    grace: Duration,
    name: &str,
) {
    if *shutting_down {
        // A second signal: SIGKILL now. The release still waits until the command's group is
        // gone (the child-exit path does it).
        tracing::warn!(signal = name, "second signal: killing the command");
        match running.as_mut() {
            Some(r) => kill(r),
            None => cancel.cancel(),
        }
        return;
    }
    *shutting_down = true;
    tracing::info!(
        signal = name,
        "shutting down: stopping the command, then releasing the lease"
    );
    match running.as_mut() {
        // Stop the child while still leading; release only once it has exited.
        Some(r) => terminate(r, grace),
        None => *want_release = true,
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

fn terminate(r: &mut Running, grace: Duration) {
    if r.kill_at.is_none() {
        kill_group(r.pgid, rustix::process::Signal::TERM);
        // Never later than the watchdog's own SIGKILL for this term.
        let by_term = r.leadership.valid_until() + grace;
        r.kill_at = Some((Instant::now() + grace).min(by_term.max(Instant::now())));
    }
}

fn kill(r: &mut Running) {
    kill_group(r.pgid, rustix::process::Signal::KILL);
    if r.kill_at.is_none() {
        r.kill_at = Some(Instant::now() + Duration::from_secs(86_400));
    }
}
