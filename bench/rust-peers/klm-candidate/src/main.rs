//! Benchmark candidate on `kube-lease-manager` 0.13.1 (kube 5, k8s-openapi 0.29).
//!
//! Used the "fully automated" way the README shows: `LeaseManagerBuilder` → `build()` →
//! `watch()`, which spawns the crate's own task and publishes `true`/`false` on a
//! `tokio::sync::watch` channel; closing the channel makes that task release the lease and end.
//!
//! What the crate can and cannot express, and how the common flags map onto it:
//! - The crate has two knobs, both whole seconds: `duration` (the Lease's
//!   `leaseDurationSeconds`) and `grace` (the leader renews `grace` seconds before its lease
//!   expires, i.e. every `duration - grace` seconds). It requires 0 < grace < duration.
//! - `--lease-duration-ms` → `duration`, rounded to the nearest second; it must come to at least
//!   2 s, or there is no room for a grace period.
//! - `--retry-period-ms` → the leader's renew interval: `grace = duration - round(retry)`, the
//!   renew interval being at least 1 s and grace kept within 1..duration-1.
//! - `--renew-deadline-ms`: not expressible. A failed renew is only logged by the crate's task,
//!   which retries with its own backoff (1 s doubling to 30 s, not configurable) and never
//!   publishes `false` for it; the leader believes it leads until a later sync shows another
//!   holder. Accepted and ignored.
//! - Followers have no poll period either: a follower sleeps until the holder's lease would
//!   expire (by its own clock against `renewTime`), then force-clears it and retries after a
//!   random 100–1000 ms. They do not watch the Lease, so a voluntary release is seen only when
//!   the released holder's old expiry time comes.
//! - Release: yes; dropping the receiver makes the task call `release()` (holder, times and
//!   duration cleared with a strategic-merge patch).
//! - Conflicts: locking an orphaned lease uses server-side apply without `force`, so two
//!   takers of the same free lease conflict instead of both winning.

use std::time::Duration;

use kube_lease_manager::LeaseManagerBuilder;
use peers_common::{run_elections, sleep_or_stop, Args, Events, Signals, SHUTDOWN_GRACE};
use tokio::sync::watch;

const BIN: &str = "klm-candidate";

/// `(duration, grace)` in seconds, as the crate takes them.
fn lease_params(args: &Args) -> Result<(u64, u64), String> {
    let round_secs = |d: Duration| (d.as_millis() as u64 + 500) / 1000;
    let duration = round_secs(args.lease_duration);
    if duration < 2 {
        return Err(format!(
            "--lease-duration-ms {} rounds to {duration} s; kube-lease-manager needs at least 2 s \
             (a whole-second duration with a grace period of at least 1 s below it)",
            args.lease_duration.as_millis()
        ));
    }
    let renew_every = round_secs(args.retry_period).max(1);
    let grace = duration.saturating_sub(renew_every).clamp(1, duration - 1);
    Ok((duration, grace))
}

fn main() {
    let args = Args::from_env_or_exit(BIN);
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level())
        .init();
    let (duration, grace) = match lease_params(&args) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("{BIN}: {e}");
            std::process::exit(2);
        }
    };
    tracing::debug!(duration, grace, "lease parameters (seconds)");
    let rt = peers_common::runtime_or_exit(BIN);
    let code = rt.block_on(run(args, duration, grace));
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

async fn run(args: Args, duration: u64, grace: u64) -> i32 {
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
        let builder = {
            let client = client.clone();
            let a = a.clone();
            let lease = lease.clone();
            move || {
                LeaseManagerBuilder::new(client.clone(), lease.clone())
                    .with_namespace(a.namespace.clone())
                    .with_identity(a.id.clone())
                    .with_duration(duration)
                    .with_grace(grace)
            }
        };
        elect(builder, lease, a.retry_period, ev.clone(), stop)
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
    builder: impl Fn() -> LeaseManagerBuilder,
    lease: String,
    retry_period: Duration,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    // `build()` reads (and if need be creates) the Lease; if the API server cannot be reached
    // yet, try again every retry period.
    let manager = loop {
        let built = tokio::select! {
            r = builder().build() => r,
            _ = peers_common::stopped(&mut stop) => return,
        };
        match built {
            Ok(m) => break m,
            Err(e) => tracing::warn!(%lease, error = %e, "building the LeaseManager"),
        }
        if sleep_or_stop(retry_period, &mut stop).await {
            return;
        }
    };
    let (mut channel, task) = manager.watch().await;
    loop {
        tokio::select! {
            changed = channel.changed() => {
                if changed.is_err() {
                    // The crate's task has ended (it logs why); nothing more will come.
                    tracing::warn!(%lease, "the LeaseManager task ended");
                    break;
                }
                let leading = *channel.borrow_and_update();
                events.set(&lease, leading);
            }
            _ = peers_common::stopped(&mut stop) => break,
        }
    }
    // Closing the channel is the crate's way to stop: its task releases the lease and returns.
    drop(channel);
    match tokio::time::timeout(SHUTDOWN_GRACE, task).await {
        Ok(Ok(Ok(_manager))) => tracing::info!(%lease, "released"),
        Ok(Ok(Err(e))) => tracing::warn!(%lease, error = %e, "release"),
        Ok(Err(e)) => tracing::warn!(%lease, error = %e, "the LeaseManager task failed"),
        Err(_) => tracing::warn!(%lease, "release timed out"),
    }
    events.set(&lease, false);
}
