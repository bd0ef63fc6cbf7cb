//! Benchmark candidate on `kube-coordinate` 2.0.0-rc.0 (kube 2, k8s-openapi 0.26).
//!
//! Used the way its README shows: `LeaderElector::spawn(config, client)` returns a handle whose
//! `state()` is a `tokio::sync::watch` of `LeaderState`; `is_leader()` means leading;
//! `handle.shutdown()` stops the task.
//!
//! What the crate can and cannot express, and how the common flags map onto it:
//! - All three client-go durations exist in its `Config`, and are passed through unchanged:
//!   `--lease-duration-ms` → `lease_duration`, `--renew-deadline-ms` → `renew_deadline`,
//!   `--retry-period-ms` → `retry_period`. The crate requires each to be at least 1 s, and
//!   lease_duration > renew_deadline > 1.2 × retry_period; otherwise exit 2.
//!   But their meanings differ from client-go's:
//!   - `renew_deadline` is the leader's renew *interval* (it renews `renew_deadline` after its
//!     last update), not a deadline for retrying;
//!   - the leader steps down (to `Standby`) at the first failed or timed-out renew, not after a
//!     deadline;
//!   - `retry_period` is used only as the wait after an error;
//!   - followers watch the Lease and, when it stops changing, try to take it
//!     `lease_duration × (1 + up to 1.2)` after the last change they saw; they do not poll.
//! - Its `api_timeout` (per request, default 5 s) is set here to `renew_deadline`, which is what
//!   client-go gives one renew attempt; at least 1 s as the crate requires.
//! - Its `manager` (the server-side-apply field manager; docs: the same across the group,
//!   distinct from the identity) is `kc-candidate`.
//! - Release: no. `shutdown()` only ends the task; the Lease stays held until it expires, so a
//!   successor takes over after the lease duration plus jitter.

use std::time::Duration;

use kube_coordinate::{Config, LeaderElector};
use peers_common::{run_elections, Args, Events, Signals, SHUTDOWN_GRACE};
use tokio::sync::watch;

const BIN: &str = "kc-candidate";
const MANAGER: &str = "kc-candidate";

fn config(args: &Args, lease: &str) -> Config {
    Config::default()
        .name(lease)
        .namespace(&args.namespace)
        .identity(&args.id)
        .manager(MANAGER)
        .lease_duration(args.lease_duration)
        .renew_deadline(args.renew_deadline)
        .retry_period(args.retry_period)
        .api_timeout(args.renew_deadline.max(Duration::from_secs(1)))
}

fn main() {
    let args = Args::from_env_or_exit(BIN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level())
        .init();
    // The crate checks its config in `spawn`; check it before connecting to anything.
    if let Err(e) = config(&args, &args.name).validate() {
        eprintln!("{BIN}: {e}");
        std::process::exit(2);
    }
    let rt = peers_common::runtime_or_exit(BIN);
    let code = rt.block_on(run(args));
    std::process::exit(code);
}

fn level() -> tracing_subscriber::filter::LevelFilter {
    use tracing_subscriber::filter::LevelFilter;
    match peers_common::log_level_name().as_str() {
        "off" => LevelFilter::OFF,
        "error" => LevelFilter::ERROR,
        "info" => LevelFilter::INFO,
        "debug" => LevelFilter::DEBUG,
        "trace" => LevelFilter::TRACE,
        _ => LevelFilter::WARN,
    }
}

async fn run(args: Args) -> i32 {
    let signals = match Signals::install() {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{BIN}: cannot install signal handlers: {e}");
            return 2;
        }
    };
    let client = match client(&args).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{BIN}: {e}");
            return 2;
        }
    };
    let events = Events::new(&args.id);
    let ev = events.clone();
    let a = args.clone();
    run_elections(BIN, &args, signals, events, move |lease, stop| {
        elect(config(&a, &lease), client.clone(), lease, ev.clone(), stop)
    })
    .await
}

async fn client(args: &Args) -> Result<kube::Client, String> {
    let kc = kube::config::Kubeconfig::read_from(&args.kubeconfig)
        .map_err(|e| format!("cannot read kubeconfig {}: {e}", args.kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &Default::default())
        .await
        .map_err(|e| format!("bad kubeconfig {}: {e}", args.kubeconfig.display()))?;
    kube::Client::try_from(config).map_err(|e| format!("cannot build the kube client: {e}"))
}

async fn elect(
    config: Config,
    client: kube::Client,
    lease: String,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    let handle = match LeaderElector::spawn(config, client) {
        Ok(h) => h,
        Err(e) => {
            // Not reached: the same config was validated in `main`.
            tracing::error!(%lease, error = %e, "LeaderElector::spawn");
            return;
        }
    };
    let mut state = handle.state();
    loop {
        let leading = state.borrow_and_update().is_leader();
        events.set(&lease, leading);
        tokio::select! {
            changed = state.changed() => {
                if changed.is_err() {
                    tracing::warn!(%lease, "the LeaderElector task ended");
                    break;
                }
            }
            _ = peers_common::stopped(&mut stop) => break,
        }
    }
    // The crate cannot release: shutdown only stops its task (and so its renewals).
    match tokio::time::timeout(SHUTDOWN_GRACE, handle.shutdown()).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!(%lease, error = %e, "shutdown"),
        Err(_) => tracing::warn!(%lease, "shutdown timed out"),
    }
    events.set(&lease, false);
}
