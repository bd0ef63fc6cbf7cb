//! What the three peer candidates share: the command line, the `started`/`stopped` lines on
//! stdout, SIGTERM/SIGINT, and the shutdown sequence. Nothing here talks to Kubernetes; each
//! candidate brings its own kube version and its own leader-election crate.

use std::collections::HashSet;
use std::future::Future;
use std::io::Write;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinSet;

/// How long the candidates get, after SIGTERM/SIGINT, to step down and release before the
/// process prints `stopped` for whatever it still holds and exits.
pub const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);

pub const USAGE: &str = "usage: {bin} --kubeconfig PATH --namespace NS --name NAME --id ID \
--lease-duration-ms N --renew-deadline-ms N --retry-period-ms N [--count M]";

/// The common command line.
#[derive(Clone, Debug)]
pub struct Args {
    pub kubeconfig: PathBuf,
    pub namespace: String,
    pub name: String,
    pub id: String,
    pub lease_duration: Duration,
    pub renew_deadline: Duration,
    pub retry_period: Duration,
    pub count: usize,
}

impl Args {
    /// Parses `std::env::args()`; on any error prints it and the usage on stderr and exits 2.
    pub fn from_env_or_exit(bin: &str) -> Args {
        match Args::parse(std::env::args().skip(1)) {
            Ok(Some(args)) => args,
            Ok(None) => {
                eprintln!("{}", USAGE.replace("{bin}", bin));
                std::process::exit(0);
            }
            Err(msg) => {
                eprintln!("{bin}: {msg}");
                eprintln!("{}", USAGE.replace("{bin}", bin));
                std::process::exit(2);
            }
        }
    }

    /// `Ok(None)` for `--help`.
    pub fn parse(mut it: impl Iterator<Item = String>) -> Result<Option<Args>, String> {
        let mut kubeconfig = None;
        let mut namespace = None;
        let mut name = None;
        let mut id = None;
        let mut lease = None;
        let mut renew = None;
        let mut retry = None;
        let mut count = None;
        while let Some(flag) = it.next() {
            // Accept both `--flag value` and `--flag=value`.
            let (flag, inline) = match flag.split_once('=') {
                Some((f, v)) if f.starts_with("--") => (f.to_string(), Some(v.to_string())),
                _ => (flag, None),
            };
            if flag == "-h" || flag == "--help" {
                return Ok(None);
            }
            let mut value = || -> Result<String, String> {
                match inline.clone() {
                    Some(v) => Ok(v),
                    None => it.next().ok_or_else(|| format!("{flag} needs a value")),
                }
            };
            let slot: &mut Option<String> = match flag.as_str() {
                "--kubeconfig" => &mut kubeconfig,
                "--namespace" => &mut namespace,
                "--name" => &mut name,
                "--id" => &mut id,
                "--lease-duration-ms" => &mut lease,
                "--renew-deadline-ms" => &mut renew,
                "--retry-period-ms" => &mut retry,
                "--count" => &mut count,
                other => return Err(format!("unknown argument `{other}`")),
            };
            if slot.is_some() {
                return Err(format!("{flag} given twice"));
            }
            *slot = Some(value()?);
        }
        fn need(v: Option<String>, flag: &str) -> Result<String, String> {
            match v {
                Some(v) if !v.is_empty() => Ok(v),
                Some(_) => Err(format!("{flag} must not be empty")),
                None => Err(format!("{flag} is required")),
            }
        }
        fn millis(v: Option<String>, flag: &str) -> Result<Duration, String> {
            let v = need(v, flag)?;
            let ms: u64 = v
                .parse()
                .map_err(|_| format!("{flag}: `{v}` is not a whole number of milliseconds"))?;
            if ms == 0 {
                return Err(format!("{flag} must be greater than 0"));
            }
            Ok(Duration::from_millis(ms))
        }
        let count = match count {
            None => 1,
            Some(v) => match v.parse::<usize>() {
                Ok(n) if n >= 1 => n,
                _ => return Err(format!("--count: `{v}` is not a whole number >= 1")),
            },
        };
        Ok(Some(Args {
            kubeconfig: PathBuf::from(need(kubeconfig, "--kubeconfig")?),
            namespace: need(namespace, "--namespace")?,
            name: need(name, "--name")?,
            id: need(id, "--id")?,
            lease_duration: millis(lease, "--lease-duration-ms")?,
            renew_deadline: millis(renew, "--renew-deadline-ms")?,
            retry_period: millis(retry, "--retry-period-ms")?,
            count,
        }))
    }

    /// `NAME` for one election, `NAME-0` … `NAME-(M-1)` for `--count M`.
    pub fn lease_names(&self) -> Vec<String> {
        if self.count == 1 {
            vec![self.name.clone()]
        } else {
            (0..self.count).map(|i| format!("{}-{i}", self.name)).collect()
        }
    }
}

/// The only writer of stdout. Prints `started <id> <lease>` / `stopped <id> <lease>` on each
/// change of this process's leadership of a lease, once per change, flushed at once.
#[derive(Clone)]
pub struct Events {
    id: Arc<str>,
    leading: Arc<Mutex<HashSet<String>>>,
}

impl Events {
    pub fn new(id: &str) -> Events {
        Events {
            id: id.into(),
            leading: Arc::default(),
        }
    }

    /// Records whether this candidate leads `lease` now; prints a line if that changed.
    pub fn set(&self, lease: &str, leading: bool) {
        let mut held = self.leading.lock().unwrap_or_else(|e| e.into_inner());
        let changed = if leading {
            held.insert(lease.to_string())
        } else {
            held.remove(lease)
        };
        if changed {
            let word = if leading { "started" } else { "stopped" };
            // Printed under the lock so that the lines of one lease can never swap places.
            let out = std::io::stdout();
            let mut out = out.lock();
            // A closed stdout must not kill the election; there is nobody left to tell.
            let _ = writeln!(out, "{word} {} {lease}", self.id);
            let _ = out.flush();
        }
    }

    pub fn is_leading(&self, lease: &str) -> bool {
        let held = self.leading.lock().unwrap_or_else(|e| e.into_inner());
        held.contains(lease)
    }

    /// Prints `stopped` for every lease still marked as held.
    pub fn stop_all(&self) {
        let held: Vec<String> = {
            let held = self.leading.lock().unwrap_or_else(|e| e.into_inner());
            let mut v: Vec<String> = held.iter().cloned().collect();
            v.sort();
            v
        };
        for lease in held {
            self.set(&lease, false);
        }
    }
}

/// SIGTERM and SIGINT handlers, installed before anything else runs so that an early signal
/// is not lost (or, worse, handled by the default action).
pub struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    /// Must be called inside the runtime.
    pub fn install() -> std::io::Result<Signals> {
        use tokio::signal::unix::{signal, SignalKind};
        Ok(Signals {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

/// Runs one election task per lease until SIGTERM/SIGINT, then flips the stop flag, gives the
/// tasks [`SHUTDOWN_GRACE`] to step down, prints `stopped` for anything still held and
/// returns the exit code (0).
///
/// `elect(lease_name, stop)` must watch `stop` (it turns `true` on shutdown), report its
/// leadership through `events`, and on stop release what the crate lets it release.
pub async fn run_elections<F, Fut>(
    bin: &str,
    args: &Args,
    mut signals: Signals,
    events: Events,
    mut elect: F,
) -> i32
where
    F: FnMut(String, watch::Receiver<bool>) -> Fut,
    Fut: Future<Output = ()> + Send + 'static,
{
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut tasks = JoinSet::new();
    for lease in args.lease_names() {
        tasks.spawn(elect(lease, stop_rx.clone()));
    }
    let sig = signals.recv().await;
    eprintln!("{bin}: {sig}: stepping down");
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(SHUTDOWN_GRACE, async {
        while let Some(res) = tasks.join_next().await {
            if let Err(e) = res {
                eprintln!("{bin}: election task failed: {e}");
            }
        }
    })
    .await;
    if drained.is_err() {
        eprintln!(
            "{bin}: {} election task(s) still running after {:?}; exiting anyway",
            tasks.len(),
            SHUTDOWN_GRACE
        );
    }
    events.stop_all();
    0
}

/// Builds a multi-thread runtime with two workers (the benchmark machine has two cores),
/// or exits 2.
pub fn runtime_or_exit(bin: &str) -> tokio::runtime::Runtime {
    match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("{bin}: cannot start the tokio runtime: {e}");
            std::process::exit(2);
        }
    }
}

/// Reads `RUST_LOG` as a single level (error, warn, info, debug, trace); default `warn`.
pub fn log_level_name() -> String {
    std::env::var("RUST_LOG")
        .ok()
        .map(|v| v.trim().to_ascii_lowercase())
        .filter(|v| ["error", "warn", "info", "debug", "trace", "off"].contains(&v.as_str()))
        .unwrap_or_else(|| "warn".to_string())
}

/// Sleeps for `d`, returning early (with `true`) if `stop` turns true first.
pub async fn sleep_or_stop(d: Duration, stop: &mut watch::Receiver<bool>) -> bool {
    if *stop.borrow() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => *stop.borrow(),
        _ = stopped(stop) => true,
    }
}

/// Resolves once `stop` is true (or its sender is gone).
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|v| *v).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Option<Args>, String> {
        Args::parse(s.split_whitespace().map(String::from))
    }

    #[test]
    fn full_command_line() {
        let a = parse(
            "--kubeconfig /k --namespace ns --name l --id a --lease-duration-ms 15000 \
             --renew-deadline-ms 10000 --retry-period-ms=2000 --count 3",
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.lease_duration, Duration::from_secs(15));
        assert_eq!(a.retry_period, Duration::from_secs(2));
        assert_eq!(a.lease_names(), ["l-0", "l-1", "l-2"]);
    }

    #[test]
    fn one_lease_keeps_its_name() {
        let a = parse(
            "--kubeconfig /k --namespace ns --name l --id a --lease-duration-ms 1 \
             --renew-deadline-ms 1 --retry-period-ms 1",
        )
        .unwrap()
        .unwrap();
        assert_eq!(a.lease_names(), ["l"]);
    }

    #[test]
    fn bad_input_is_an_error() {
        assert!(parse("--kubeconfig /k").is_err());
        assert!(parse("--bogus 1").is_err());
        assert!(parse(
            "--kubeconfig /k --namespace ns --name l --id a --lease-duration-ms x \
             --renew-deadline-ms 1 --retry-period-ms 1"
        )
        .is_err());
        assert!(parse(
            "--kubeconfig /k --namespace ns --name l --id a --lease-duration-ms 1 \
             --renew-deadline-ms 1 --retry-period-ms 1 --count 0"
        )
        .is_err());
    }
}
