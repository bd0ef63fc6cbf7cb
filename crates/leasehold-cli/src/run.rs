//! `leasehold run`: contend, and run the command only while leading.

use crate::{
    args::{Backend, LockArgs, RunArgs},
    child::{self, Watchdog},
};
use leasehold::{Elector, Leadership, LockBackend, backend::file::FileLock};
use std::{os::unix::process::ExitStatusExt as _, path::PathBuf, time::Duration};
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
    /// The kubeconfig named by `--kubeconfig` is unusable (exit 64).
    #[error("invalid --kubeconfig")]
    Kubeconfig(#[source] leasehold::backend::kube::ClientError),
    /// No Kubernetes client could be configured (exit 1).
    #[error("cannot configure a Kubernetes client")]
    Client(#[source] leasehold::backend::kube::ClientError),
    /// The command could not be started (exit 1).
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
    /// The lock could not be read (`status`; exit 1).
    #[error("cannot read the lock")]
    Lock(#[source] leasehold::LockError),
}

// === impl Error ===

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> i32 {
        match self {
            Self::Usage(_) | Self::Kubeconfig(_) => 64,
            _ => 1,
        }
    }
}

/// The default record file for `--backend file`: in `$XDG_RUNTIME_DIR` (private to the user)
/// when set, else the temporary directory.
pub fn default_file(name: &str) -> PathBuf {
    let dir = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .filter(|d| d.is_dir())
        .unwrap_or_else(std::env::temp_dir);
    dir.join(format!("leasehold-{name}.json"))
}

/// Builds the backend from the lock flags and hands it to `f` (generic over the backend type).
pub async fn with_backend<R>(
    lock: &LockArgs,
    f: impl AsyncFnOnce(Box<dyn DynLock>) -> Result<R, Error>,
) -> Result<R, Error> {
    match lock.backend {
        Backend::File => {
            let path = lock
                .file
                .clone()
                .unwrap_or_else(|| default_file(&lock.name));
            f(Box::new(FileLock::new(path))).await
        }
        Backend::Kube => {
            use leasehold::backend::kube;
            let client = kube::client(lock.kubeconfig.as_deref())
                .await
                .map_err(|e| match e {
                    kube::ClientError::Kubeconfig { .. } => Error::Kubeconfig(e),
                    _ => Error::Client(e),
                })?;
            let ns = lock
                .namespace
                .clone()
                .unwrap_or_else(kube::default_namespace);
            f(Box::new(kube::LeaseLock::new(client, &ns, &lock.name))).await
        }
    }
}

/// A backend behind a box, so the CLI picks one at run time.
pub trait DynLock: LockBackend {}
impl<T: LockBackend> DynLock for T {}

/// Lets a boxed backend be used where a `LockBackend` is expected.
pub struct Boxed(pub Box<dyn DynLock>);

impl LockBackend for Boxed {
    fn describe(&self) -> String {
        self.0.describe()
    }
    fn get(
        &self,
    ) -> leasehold_core::lock::BoxFuture<
        '_,
        Result<Option<leasehold::Versioned>, leasehold::LockError>,
    > {
        self.0.get()
    }
    fn create(
        &self,
        record: &leasehold::LeaderRecord,
    ) -> leasehold_core::lock::BoxFuture<'_, Result<leasehold::Version, leasehold::LockError>> {
        self.0.create(record)
    }
    fn update(
        &self,
        record: &leasehold::LeaderRecord,
        version: &leasehold::Version,
    ) -> leasehold_core::lock::BoxFuture<'_, Result<leasehold::Version, leasehold::LockError>> {
        self.0.update(record, version)
    }
    fn watch(&self, version: Option<&leasehold::Version>) -> leasehold_core::lock::WatchStream {
        self.0.watch(version)
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
    let identity = identity(&args);
    let lock = args.lock.clone();
    with_backend(&lock, async move |backend| {
        run_on(Boxed(backend), args, identity).await
    })
    .await
}

async fn run_on(backend: Boxed, args: RunArgs, identity: String) -> Result<i32, Error> {
    let timing = args.timing.clone();
    // SIGKILL lands before others could take over: the step-down happens at renew deadline,
    // others wait a full lease duration; SIGKILL comes halfway through that margin.
    let grace = (timing.lease_duration.saturating_sub(timing.renew_deadline)) / 2;
    tracing::info!(
        lock = %backend.describe(), identity = %identity,
        lease_duration = ?timing.lease_duration, renew_deadline = ?timing.renew_deadline,
        retry_period = ?timing.retry_period, kill_grace = ?grace,
        command = ?args.command, "leasehold starting"
    );

    let (lead_tx, mut lead_rx) = mpsc::unbounded_channel::<Leadership>();
    let (note_tx, mut note_rx) = mpsc::unbounded_channel::<Note>();
    let elector = Elector::new(backend, identity.clone(), timing)
        .map_err(|e| Error::Usage(format!("{e}: {}", leasehold_error_source(&e))))?
        .on_started_leading(move |l| {
            let _ = lead_tx.send(l);
        })
        .on_new_leader(move |who| {
            let _ = note_tx.send(Note::Leader(who.to_owned()));
        })
        .with_clock_offset(args.clock_offset.unwrap_or(jiff::SignedDuration::ZERO));
    let cancel = CancellationToken::new();
    let mut elector_task = tokio::spawn(elector.run(cancel.clone()));

    let mut sigterm = signal(SignalKind::terminate()).map_err(Error::Signals)?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(Error::Signals)?;

    let name = args.lock.name.clone();
    let mut running: Option<Running> = None;
    // The current child's term deadline, as it moves; one receiver per child (a fresh clone
    // would report the value as changed every time).
    let mut until_rx: Option<tokio::sync::watch::Receiver<Instant>> = None;
    let mut current: Option<Leadership> = None;
    let mut shutting_down = false;
    let mut exit_code = 0;
    let far = || Instant::now() + Duration::from_secs(86_400);

    loop {
        // Start the command when leading and no earlier child is left.
        if running.is_none() && !shutting_down && !args.command.is_empty() {
            if let Some(l) = current
                .as_ref()
                .filter(|l| !l.is_lost() && l.valid_until() > Instant::now())
            {
                let env = [
                    ("LEASEHOLD_NAME", name.clone()),
                    ("LEASEHOLD_IDENTITY", identity.clone()),
                    ("LEASEHOLD_FENCING_TOKEN", l.fencing_token().to_string()),
                ];
                let child = child::spawn(&args.command, &env).map_err(|source| Error::Spawn {
                    command: args.command[0].to_string_lossy().into_owned(),
                    source,
                })?;
                let pgid = child.id().unwrap_or_default();
                let watchdog = match Watchdog::start(pgid, grace, l.valid_until()).await {
                    Ok(w) => w,
                    Err(e) => {
                        // Never leave a child running without its guard.
                        let mut child = child;
                        kill_group(pgid, rustix::process::Signal::KILL);
                        let _ = child.wait().await;
                        child::wait_group_gone(pgid, grace).await;
                        cancel.cancel();
                        let _ = (&mut elector_task).await;
                        return Err(Error::Watchdog(e));
                    }
                };
                tracing::info!(pid = pgid, fencing_token = %l.fencing_token(), "started command");
                let mut rx = l.subscribe_valid_until();
                rx.mark_unchanged();
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
        }
        let lost = running.as_ref().map(|r| r.leadership.token());
        let kill_at = running.as_ref().and_then(|r| r.kill_at).unwrap_or_else(far);

        tokio::select! {
            biased;
            _ = async { sigterm.recv().await }, if true => on_signal(&mut shutting_down, &mut running, &cancel, grace, "SIGTERM"),
            _ = sigint.recv() => on_signal(&mut shutting_down, &mut running, &cancel, grace, "SIGINT"),
            Some(l) = lead_rx.recv() => {
                println!("leading: {identity} (fencing token {})", l.fencing_token());
                current = Some(l);
            }
            Some(Note::Leader(who)) = note_rx.recv() => {
                if who.is_empty() {
                    println!("released: no leader");
                } else if who != identity {
                    println!("leader: {who}");
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
                    let until = r.leadership.valid_until();
                    if r.watchdog.extend(until).await.is_err() {
                        tracing::error!("watchdog is gone; stopping command");
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
                    tracing::warn!(pgid = r.pgid, "processes of the command's group survive SIGKILL (uninterruptible sleep?)");
                }
                r.watchdog.finish().await;
                let code = match &status {
                    Ok(s) => s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0)),
                    Err(_) => 1,
                };
                if r.kill_at.is_some() || term_over || shutting_down {
                    tracing::info!(code, "command stopped");
                    println!("stopped leading: {identity}");
                    if shutting_down {
                        cancel.cancel();
                    }
                } else {
                    // It ended by itself: release and exit with its code.
                    tracing::info!(code, "command exited; releasing the lease");
                    exit_code = code;
                    shutting_down = true;
                    cancel.cancel();
                }
            }
            _ = &mut elector_task => {
                if let Some(mut r) = running.take() {
                    kill(&mut r);
                    let _ = r.child.wait().await;
                    r.watchdog.finish().await;
                }
                if let Some(l) = current.as_ref().filter(|_| args.command.is_empty()) {
                    println!("stopped leading: {identity} (fencing token {})", l.fencing_token());
                }
                return Ok(exit_code);
            }
        }
        // Without a command, report the end of a term as it happens.
        if args.command.is_empty() {
            if let Some(l) = current.as_ref().filter(|l| l.is_lost()) {
                println!(
                    "stopped leading: {identity} (fencing token {})",
                    l.fencing_token()
                );
                current = None;
            }
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
        None => cancel.cancel(),
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
