//! An example operator built on leasehold: for every ConfigMap labelled
//! `example.leasehold.dev/source`, it keeps a derived ConfigMap `<name>-derived` whose data is
//! the source's, each key prefixed `derived-` (and each value upper-cased when the source's
//! annotation `example.leasehold.dev/transform` says `upper`).
//!
//! Run it as several replicas; one reconciles at a time:
//!
//! - every replica watches the sources and the derived objects all the time (leasehold's
//!   `runtime::Informer`), so a standby that is elected reconciles at once, from a warm cache;
//! - the leader reconciles through `runtime::run_controller_while_leading`: every source once on
//!   acquisition, then every change; when its term ends the reconciles in flight finish (before
//!   the lease can expire for anyone else), and only then is the Lease released;
//! - every write carries the term's fencing token (`fence::Fence`), so a write from a deposed
//!   leader cannot land on an object its successor has written.
//!
//! ```text
//! example-operator [--kubeconfig PATH] [--namespace NS] [--lease NAME] [--id ID] [--cold]
//!                  [--lease-duration S --renew-deadline S --retry-period S] [--workers N]
//! ```
//! The identity defaults to `$POD_NAME` (set it from the downward API: the server-side fencing
//! policy in `deploy/fencing-policy.yaml` compares it with the Pod name in the replica's
//! token), else the host name. `--cold` starts the watches only on acquisition, as an operator
//! that creates its `Controller` when elected does; the benchmark compares the two.
//!
//! On stdout it prints one line per event, for tests and the benchmark: `elected ID TOKEN`,
//! `first-reconcile ID NAME` (once per term), `stopped ID TOKEN`. Logs go to stderr.

mod derive;

use derive::{DERIVED_LABEL, Derived, SOURCE_LABEL};
use futures_util::StreamExt as _;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{
    Api, ResourceExt as _,
    runtime::{
        Controller,
        controller::{self, Action},
        reflector::{ObjectRef, Store},
        watcher,
    },
};
use leasehold::{
    Config, Elector, Leadership, Timing,
    backend::kubernetes::LeaseLock,
    fence::{self, Fence},
    runtime::{Informer, Ready, run_controller_while_leading},
};
use std::{
    io::Write as _,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// Everything a reconcile needs, for one term.
struct Ctx {
    fence: Fence,
    id: String,
    api: Api<ConfigMap>,
    derived: Store<ConfigMap>,
    derived_ready: Ready,
    first: AtomicBool,
}

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Derive(#[from] derive::Error),
    #[error(transparent)]
    Fence(#[from] fence::Error),
}

async fn reconcile(source: Arc<ConfigMap>, ctx: Arc<Ctx>) -> Result<Action, Error> {
    tracing::debug!(configmap = %source.name_any(), "reconcile");
    let desired = Derived::from_source(&source)?;
    // A cold controller's derived cache fills while the sources are listed; a warm one is ready.
    ctx.derived_ready.wait().await;
    let current = ctx
        .derived
        .get(&ObjectRef::new(desired.name()).within(&ctx.api_namespace()));
    if !desired.is_current(current.as_deref()) {
        tracing::debug!(configmap = %source.name_any(), derived = desired.name(), "writing");
        ctx.fence
            .replace(&ctx.api, current.as_deref(), desired.into_object(&ctx.id))
            .await?;
    }
    tracing::debug!(configmap = %source.name_any(), "reconciled");
    if !ctx.first.swap(true, Ordering::Relaxed) {
        emit(&format!("first-reconcile {} {}", ctx.id, source.name_any()));
    }
    Ok(Action::await_change())
}

fn error_policy(source: Arc<ConfigMap>, error: &Error, _: Arc<Ctx>) -> Action {
    let name = source.name_any();
    match error {
        Error::Derive(_) => {
            tracing::error!(configmap = %name, %error, "cannot derive from this ConfigMap; waiting for it to change");
            Action::await_change()
        }
        Error::Fence(fence::Error::Superseded { .. }) => {
            tracing::warn!(configmap = %name, %error, "a newer leader owns this object; not writing it");
            Action::await_change()
        }
        Error::Fence(fence::Error::TermEnded { .. }) => Action::await_change(),
        Error::Fence(_) => {
            tracing::warn!(configmap = %name, %error, "reconcile failed; retrying in 5 s");
            Action::requeue(Duration::from_secs(5))
        }
    }
}

impl Ctx {
    fn new(
        term: &Leadership,
        id: &str,
        api: &Api<ConfigMap>,
        derived: &Informer<ConfigMap>,
    ) -> Self {
        Self {
            fence: Fence::new(term),
            id: id.to_owned(),
            api: api.clone(),
            derived: derived.store(),
            derived_ready: derived.ready(),
            first: AtomicBool::new(false),
        }
    }

    fn api_namespace(&self) -> String {
        self.api.namespace().unwrap_or_default().to_owned()
    }
}

/// One line on stdout, flushed at once.
fn emit(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The command line.
struct Args {
    kubeconfig: Option<std::path::PathBuf>,
    namespace: Option<String>,
    lease: String,
    id: String,
    cold: bool,
    timing: Timing,
    workers: u16,
}

fn parse_args() -> Result<Args, lexopt::Error> {
    use lexopt::prelude::*;
    let mut args = Args {
        kubeconfig: None,
        namespace: None,
        lease: "example-operator".into(),
        id: std::env::var("POD_NAME")
            .ok()
            .filter(|p| !p.is_empty())
            .unwrap_or_else(|| {
                let id = leasehold::default_identity();
                id.rsplit_once('_')
                    .map_or(id.clone(), |(host, _)| host.to_owned())
            }),
        cold: false,
        timing: Timing::default(),
        workers: 4,
    };
    let seconds = |v: std::ffi::OsString, flag: &str| -> Result<Duration, lexopt::Error> {
        let s: f64 = v.parse()?;
        Duration::try_from_secs_f64(s).map_err(|e| format!("{flag}: {e}").into())
    };
    let mut parser = lexopt::Parser::from_env();
    while let Some(arg) = parser.next()? {
        match arg {
            Long("kubeconfig") => args.kubeconfig = Some(parser.value()?.into()),
            Long("namespace") => args.namespace = Some(parser.value()?.parse()?),
            Long("lease") => args.lease = parser.value()?.parse()?,
            Long("id") => args.id = parser.value()?.parse()?,
            Long("cold") => args.cold = true,
            Long("workers") => args.workers = parser.value()?.parse()?,
            Long("lease-duration") => {
                args.timing.lease_duration = seconds(parser.value()?, "--lease-duration")?;
            }
            Long("renew-deadline") => {
                args.timing.renew_deadline = seconds(parser.value()?, "--renew-deadline")?;
            }
            Long("retry-period") => {
                args.timing.retry_period = seconds(parser.value()?, "--retry-period")?;
            }
            _ => return Err(arg.unexpected()),
        }
    }
    Ok(args)
}

fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let args = match parse_args() {
        Ok(args) => args,
        Err(e) => {
            eprintln!("example-operator: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    match runtime.block_on(run(args)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("example-operator: {}", leasehold::display_chain(&*e));
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(args: Args) -> Result<(), Box<dyn std::error::Error>> {
    // `--kubeconfig`, else `$KUBECONFIG`, `~/.kube/config` or the Pod's service account.
    let config = match &args.kubeconfig {
        Some(path) => {
            let kubeconfig = kube::config::Kubeconfig::read_from(path)?;
            let options = kube::config::KubeConfigOptions::default();
            kube::Config::from_custom_kubeconfig(kubeconfig, &options).await?
        }
        None => kube::Config::infer().await?,
    };
    let client = client(config)?;
    let ns = args
        .namespace
        .clone()
        .unwrap_or_else(|| client.default_namespace().to_owned());
    let config = Config::new(args.id.clone()).timing(args.timing);
    let (id, id2) = (args.id.clone(), args.id.clone());
    let elector = Elector::with_config(LeaseLock::new(client.clone(), &ns, &args.lease), config)?
        .on_started_leading(move |term| {
            emit(&format!("elected {id} {}", term.fencing_token()));
        })
        .on_stopped_leading(move || emit(&format!("stopped {id2}")));
    let api = Api::<ConfigMap>::namespaced(client, &ns);
    let sources = watcher::Config::default().labels(SOURCE_LABEL);
    let derived = watcher::Config::default().labels(DERIVED_LABEL);
    let controller = controller::Config::default().concurrency(args.workers);

    let cancel = CancellationToken::new();
    tokio::spawn(cancel_on_signal(cancel.clone()));
    if args.cold {
        let id = args.id.clone();
        elector
            .run_while_leading(cancel, move |term| {
                cold_term(
                    term,
                    id.clone(),
                    api.clone(),
                    sources.clone(),
                    derived.clone(),
                    controller.clone(),
                )
            })
            .await;
    } else {
        let derived = Informer::spawn(api.clone(), derived);
        let sources = Informer::spawn(api.clone(), sources);
        let id = args.id.clone();
        run_controller_while_leading(
            elector,
            cancel,
            sources,
            reconcile,
            error_policy,
            move |term| Arc::new(Ctx::new(term, &id, &api, &derived)),
            controller,
        )
        .await;
    }
    Ok(())
}

/// kube's client, built as `kube::Client::try_from(config)` builds it but with `TCP_NODELAY`.
///
/// kube's own builder leaves Nagle's algorithm on (kube-rs issue 2056): a request written in two
/// pieces then waits for the server's delayed ACK, about 40 ms here, on every write, the
/// Lease's acquisition included. Measured with this operator: from the old leader's release to
/// the new leader's acquisition 48 ms with kube's default client, a few ms with this one.
fn client(config: kube::Config) -> Result<kube::Client, Box<dyn std::error::Error>> {
    use hyper_util::{client::legacy::connect::HttpConnector, rt::TokioExecutor};
    use kube::client::ConfigExt as _;
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_nodelay(true);
    http.set_connect_timeout(config.connect_timeout);
    let https = config.rustls_https_connector_with_connector(http)?;
    let hyper = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .build::<_, kube::client::Body>(https);
    let service = tower::ServiceBuilder::new()
        .layer(config.base_uri_layer())
        .layer(config.extra_headers_layer()?)
        .option_layer(config.auth_layer()?)
        .map_err(tower::BoxError::from)
        .service(hyper);
    Ok(kube::Client::new(service, config.default_namespace))
}

/// One term of the cold variant: watches started on acquisition, kube-runtime's `Controller`
/// until the term ends, then a graceful shutdown.
async fn cold_term(
    term: Leadership,
    id: String,
    api: Api<ConfigMap>,
    sources: watcher::Config,
    derived: watcher::Config,
    config: controller::Config,
) {
    let derived = Informer::spawn(api.clone(), derived);
    let ctx = Arc::new(Ctx::new(&term, &id, &api, &derived));
    let stop = term.token();
    Controller::new(api, sources)
        .with_config(config)
        .graceful_shutdown_on(async move { stop.cancelled().await })
        .run(reconcile, error_policy, ctx)
        .for_each(|_| std::future::ready(()))
        .await;
}

async fn cancel_on_signal(cancel: CancellationToken) {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        tracing::error!("cannot install signal handlers");
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("stopping: the reconciles in flight finish, then the Lease is released");
    cancel.cancel();
}
