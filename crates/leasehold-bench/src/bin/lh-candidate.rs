//! The leasehold library as a benchmark candidate: M electors in one process, printing
//! `started <id> <lease>` / `stopped <id> <lease>` on stdout, releasing on SIGTERM.
//!
//! `lh-candidate --kubeconfig PATH --namespace NS --name NAME --id ID --lease-duration-ms N
//! --renew-deadline-ms N --retry-period-ms N [--count M]`; with `--etcd URL,...` instead of
//! `--kubeconfig`, the elections are on etcd, all `--count` of them on one shared session: an
//! elector each, or with `--engine set` one `ElectionSet` for all.

use leasehold::{Elector, Timing, backend::kubernetes::LeaseLock};
use std::{io::Write as _, path::PathBuf, time::Duration};
use tokio_util::sync::CancellationToken;

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// Until SIGTERM or SIGINT.
async fn signalled() {
    let mut term =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal");
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
}

fn main() -> std::process::ExitCode {
    let mut args = std::env::args().skip(1);
    let (mut kubeconfig, mut ns, mut name, mut id) = (None, "default".to_owned(), None, None);
    let mut etcd: Option<String> = None;
    let mut set = false;
    let (mut lease, mut renew, mut retry, mut count) = (15_000u64, 10_000u64, 2_000u64, 1usize);
    while let Some(flag) = args.next() {
        let Some(value) = args.next() else {
            eprintln!("lh-candidate: {flag} needs a value");
            return std::process::ExitCode::from(2);
        };
        let num = |v: &str| {
            v.parse::<u64>()
                .map_err(|_| format!("{flag}: `{v}` is not a number"))
        };
        let r: Result<(), String> = (|| {
            match flag.as_str() {
                "--kubeconfig" => kubeconfig = Some(PathBuf::from(&value)),
                "--etcd" => etcd = Some(value.clone()),
                "--namespace" => ns = value.clone(),
                "--name" => name = Some(value.clone()),
                "--id" => id = Some(value.clone()),
                "--lease-duration-ms" => lease = num(&value)?,
                "--renew-deadline-ms" => renew = num(&value)?,
                "--retry-period-ms" => retry = num(&value)?,
                "--count" => count = num(&value)? as usize,
                "--engine" => {
                    set = match value.as_str() {
                        "set" => true,
                        "electors" => false,
                        v => return Err(format!("--engine: `{v}` is not `set` or `electors`")),
                    }
                }
                other => return Err(format!("unknown flag {other}")),
            }
            Ok(())
        })();
        if let Err(e) = r {
            eprintln!("lh-candidate: {e}");
            return std::process::ExitCode::from(2);
        }
    }
    let (Some(name), Some(id)) = (name, id) else {
        eprintln!("lh-candidate: --name and --id are required");
        return std::process::ExitCode::from(2);
    };
    // Warnings to stderr, as the Rust peers log (`RUST_LOG` as one level, default `warn`) and
    // as an operator runs the library. With no subscriber at all, every disabled span in h2
    // would go on to ask the `log` crate (kube-client turns on tracing's `log` fallback): about
    // 7 % of this process's instructions at 300 elections, measured with callgrind.
    let level = match std::env::var("RUST_LOG") {
        Err(_) => tracing_subscriber::filter::LevelFilter::WARN,
        Ok(v) => match v.trim().parse() {
            Ok(level) => level,
            Err(_) => {
                eprintln!(
                    "lh-candidate: RUST_LOG `{v}` is not a level (off, error, warn, info, debug, trace)"
                );
                return std::process::ExitCode::from(2);
            }
        },
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();
    let timing = Timing {
        lease_duration: Duration::from_millis(lease),
        renew_deadline: Duration::from_millis(renew),
        retry_period: Duration::from_millis(retry),
        release_on_cancel: true,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        if let Some(endpoints) = etcd {
            return on_etcd(&endpoints, &name, &id, &timing, count, set).await;
        }
        let client =
            match leasehold::backend::kubernetes::client_with_http2(kubeconfig.as_deref()).await {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("lh-candidate: {}", leasehold::display_chain(&e));
                    return std::process::ExitCode::from(2);
                }
            };
        let cancel = CancellationToken::new();
        let mut tasks = Vec::with_capacity(count);
        for i in 0..count {
            let lease = if count == 1 {
                name.clone()
            } else {
                format!("{name}-{i}")
            };
            let (l1, l2, i1, i2) = (lease.clone(), lease.clone(), id.clone(), id.clone());
            let elector = match Elector::new(
                LeaseLock::new(client.clone(), &ns, &lease),
                id.clone(),
                timing.clone(),
            ) {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("lh-candidate: {}", leasehold::display_chain(&e));
                    return std::process::ExitCode::from(2);
                }
            };
            let elector = elector
                .on_started_leading(move |_| say(&format!("started {i1} {l1}")))
                .on_stopped_leading(move || say(&format!("stopped {i2} {l2}")));
            tasks.push(tokio::spawn(elector.run(cancel.clone())));
        }
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("signal");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        cancel.cancel();
        for t in tasks {
            let _ = t.await;
        }
        std::process::ExitCode::SUCCESS
    })
}

/// The elections `name` (or `name-0` ..) on etcd, one elector each.
async fn on_etcd(
    endpoints: &str,
    name: &str,
    id: &str,
    timing: &Timing,
    count: usize,
    set: bool,
) -> std::process::ExitCode {
    use leasehold::backend::etcd::{EtcdElection, EtcdSession, etcd_client};
    let endpoints: Vec<&str> = endpoints.split(',').collect();
    let client = match etcd_client::Client::connect(&endpoints, None).await {
        Ok(c) => c,
        Err(e) => {
            eprintln!("lh-candidate: etcd: {e}");
            return std::process::ExitCode::from(2);
        }
    };
    let cancel = CancellationToken::new();
    if set {
        return on_set(client, name, id, timing, count, cancel).await;
    }
    let mut tasks = Vec::with_capacity(count);
    // One election: a session of its own, as a single-election service holds it. Many: one
    // session for all, one lease and one keepalive stream, as Go's `-count` holds them.
    let session = (count > 1).then(|| EtcdSession::new(client.clone(), timing.clone()));
    for i in 0..count {
        let election = if count == 1 {
            name.to_owned()
        } else {
            format!("{name}-{i}")
        };
        let (e1, e2, i1, i2) = (
            election.clone(),
            election.clone(),
            id.to_owned(),
            id.to_owned(),
        );
        let on = match &session {
            Some(s) => s.election(election),
            None => EtcdElection::new(client.clone(), election),
        };
        let elector = match Elector::new(on, id, timing.clone()) {
            Ok(e) => e,
            Err(e) => {
                eprintln!("lh-candidate: {}", leasehold::display_chain(&e));
                return std::process::ExitCode::from(2);
            }
        };
        let elector = elector
            .on_started_leading(move |_| say(&format!("started {i1} {e1}")))
            .on_stopped_leading(move || say(&format!("stopped {i2} {e2}")));
        tasks.push(tokio::spawn(elector.run(cancel.clone())));
    }
    signalled().await;
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    std::process::ExitCode::SUCCESS
}

/// The elections `name-0` .. as one `ElectionSet` on one session.
async fn on_set(
    client: leasehold::backend::etcd::etcd_client::Client,
    name: &str,
    id: &str,
    timing: &Timing,
    count: usize,
    cancel: CancellationToken,
) -> std::process::ExitCode {
    use leasehold::backend::etcd::{ElectionSet, EtcdSession, SetEvent};
    let session = EtcdSession::new(client, timing.clone());
    let names = (0..count).map(|i| format!("{name}-{i}")).collect();
    let id2 = id.to_owned();
    let set = ElectionSet::new(&session, id, timing.clone()).on_event(move |e| match e {
        SetEvent::StartedLeading { name, .. } => say(&format!("started {id2} {name}")),
        SetEvent::StoppedLeading { name, .. } => say(&format!("stopped {id2} {name}")),
        _ => {}
    });
    let run = match set.run(names, cancel.clone()) {
        Ok(r) => tokio::spawn(r),
        Err(e) => {
            eprintln!("lh-candidate: {}", leasehold::display_chain(&e));
            return std::process::ExitCode::from(2);
        }
    };
    signalled().await;
    cancel.cancel();
    let _ = run.await;
    std::process::ExitCode::SUCCESS
}
