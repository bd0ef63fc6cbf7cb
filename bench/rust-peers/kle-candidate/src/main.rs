//! Benchmark candidate on `kube-leader-election` 0.44.0 (kube 4, k8s-openapi 0.28).
//!
//! Used the way the crate's README and `examples/shared-lease.rs` show: a `LeaseLock`, and a
//! loop that calls `try_acquire_or_renew()` and sleeps; `Acquired` means leading, `NotAcquired`
//! means not; `step_down()` releases.
//!
//! What the crate can and cannot express, and how the common flags map onto it:
//! - `--lease-duration-ms` → `LeaseLockParams::lease_ttl`. The crate writes and reads
//!   `leaseDurationSeconds` with `Duration::as_secs()`, so the TTL is truncated to whole seconds;
//!   under 1 s is refused here (the crate would write 0).
//! - `--retry-period-ms` → the sleep between two `try_acquire_or_renew()` calls, for the leader
//!   (its renew interval) and the followers (their poll interval) alike. The crate has no loop of
//!   its own; the interval is the caller's, as in the example.
//! - `--renew-deadline-ms`: not expressible. The crate has no renew deadline: a failed renew is
//!   an `Err` that says nothing about leadership, and the example leaves the leader flag as it
//!   was; so a leader cut off from the API server goes on believing it leads until a call
//!   succeeds again and answers `NotAcquired`. Accepted and ignored.
//! - Release: yes, `step_down()` (holder cleared, `leaseDurationSeconds` set to 1, so followers
//!   may take it about 1 s later by their own clocks).
//! - Expiry is judged by the follower's clock against `renewTime` in the Lease (clock skew
//!   matters), and acquire/renew are merge patches without `resourceVersion`: two followers
//!   that both see an expired lease can both be told `Acquired`.

use std::time::Duration;

use kube_leader_election::{LeaseLock, LeaseLockParams, LeaseLockResult};
use peers_common::{run_elections, sleep_or_stop, Args, Events, Signals, SHUTDOWN_GRACE};
use tokio::sync::watch;

const BIN: &str = "kle-candidate";

fn main() {
    let args = Args::from_env_or_exit(BIN);
    env_logger::Builder::new()
        .parse_filters(&peers_common::log_level_name())
        .target(env_logger::Target::Stderr)
        .init();
    if args.lease_duration < Duration::from_secs(1) {
        eprintln!("{BIN}: --lease-duration-ms must be at least 1000 (the crate counts whole seconds)");
        std::process::exit(2);
    }
    let rt = peers_common::runtime_or_exit(BIN);
    let code = rt.block_on(run(args));
    std::process::exit(code);
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
        let lock = LeaseLock::new(
            client.clone(),
            &a.namespace,
            LeaseLockParams {
                holder_id: a.id.clone(),
                lease_name: lease.clone(),
                lease_ttl: a.lease_duration,
            },
        );
        elect(lock, lease, a.retry_period, ev.clone(), stop)
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
    lock: LeaseLock,
    lease: String,
    retry_period: Duration,
    events: Events,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let res = tokio::select! {
            r = lock.try_acquire_or_renew() => r,
            _ = peers_common::stopped(&mut stop) => break,
        };
        match res {
            Ok(LeaseLockResult::Acquired(_)) => events.set(&lease, true),
            Ok(LeaseLockResult::NotAcquired(_)) => events.set(&lease, false),
            // As in the crate's example: an error leaves the leadership flag as it was.
            Err(e) => log::warn!("{lease}: try_acquire_or_renew: {e}"),
        }
        if sleep_or_stop(retry_period, &mut stop).await {
            break;
        }
    }
    // Shutdown. A call cancelled in flight may still have renewed or taken the lease, so step
    // down whenever we led or might have; `step_down` itself checks the holder first.
    let release = tokio::time::timeout(SHUTDOWN_GRACE, lock.step_down()).await;
    match release {
        Ok(Ok(())) => log::info!("{lease}: released"),
        Ok(Err(kube_leader_election::Error::ReleaseLockWhenNotLeading { .. })) => {}
        Ok(Err(e)) if events.is_leading(&lease) => log::warn!("{lease}: step_down: {e}"),
        Ok(Err(e)) => log::debug!("{lease}: step_down: {e}"),
        Err(_) => log::warn!("{lease}: step_down timed out"),
    }
    events.set(&lease, false);
}
