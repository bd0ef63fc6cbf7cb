//! Command-line parsing: lexopt splits the arguments (`--flag value`, `--flag=value`, `--`, and
//! arguments that are not UTF-8), and this module checks them, so that every error names its
//! flag (exit 64). Not clap: for this small, fixed flag set clap would add about 220 KB to the
//! binary, and the binary's size is most of the sidecar's resident memory (docs/design.md).

use leasehold::backend::kubernetes::{is_namespace_name, is_object_name};
use std::{ffi::OsString, path::PathBuf, time::Duration};

/// A usage error: exits 64 (`EX_USAGE`) with this message.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UsageError(pub String);

/// Which lock to use.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// A Kubernetes Lease.
    Kube,
    /// A local JSON file.
    File,
    /// An etcd v3 election, shared with `etcdctl elect` and Go's `concurrency.Election`.
    Etcd,
}

/// How to reach etcd (`--backend etcd`).
// Read only by the etcd backend, which a build may leave out.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
#[derive(Clone, Debug, Default)]
pub struct EtcdArgs {
    /// `--endpoints`, else `$ETCDCTL_ENDPOINTS`, else `http://127.0.0.1:2379` (etcdctl's
    /// default), each with its scheme.
    pub endpoints: Vec<String>,
    /// `--etcd-ca`: the CA bundle that signs the servers' certificates (else the system's roots).
    pub ca: Option<PathBuf>,
    /// `--etcd-cert` and `--etcd-key`: a client certificate and its key.
    pub cert_key: Option<(PathBuf, PathBuf)>,
    /// `--etcd-user`, with the password from `--etcd-password-file` or `$ETCDCTL_PASSWORD`.
    pub user: Option<(String, Secret)>,
}

/// A password: kept out of `Debug` output, so it never reaches a log.
// Read only by the etcd backend, which a build may leave out.
#[cfg_attr(not(feature = "etcd"), allow(dead_code))]
#[derive(Clone, Default)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("(hidden)")
    }
}

/// Options shared by `run` and `status`.
#[derive(Clone, Debug)]
pub struct LockArgs {
    /// `--name`: the election (Lease or file) name.
    pub name: String,
    /// `--namespace`.
    pub namespace: Option<String>,
    /// `--backend`.
    pub backend: Backend,
    /// `--file`.
    pub file: Option<PathBuf>,
    /// `--kubeconfig`.
    pub kubeconfig: Option<PathBuf>,
    /// `--lock-type` (kube backend).
    pub lock_type: leasehold::backend::kubernetes::LockType,
    /// How to reach etcd, with `--backend etcd`.
    #[cfg_attr(not(feature = "etcd"), allow(dead_code))]
    pub etcd: Option<EtcdArgs>,
}

/// When `/readyz` reports ready.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum ReadyWhen {
    /// Once the lock has been observed (the default).
    #[default]
    Observed,
    /// Only while leading.
    Leader,
    /// Once any candidate leads (this one or another).
    Elected,
}

/// The sidecar's extras: HTTP status, Pod role label, Events.
#[derive(Clone, Debug, Default)]
pub struct SidecarArgs {
    /// `--http ADDR`.
    pub http: Option<std::net::SocketAddr>,
    /// `--control ADDR`: a loopback address serving requests that move leadership.
    pub control: Option<std::net::SocketAddr>,
    /// `--ready-when`.
    pub ready_when: ReadyWhen,
    /// The Pod to label (`--pod-name`, `ELECTOR_POD_NAME`, `$HOSTNAME`), when labels are on.
    pub pod_name: Option<String>,
    /// `--label-key`.
    pub label_key: String,
    /// `--no-events`.
    pub no_events: bool,
    /// `--no-deletion-cost`: leave the Pod's `controller.kubernetes.io/pod-deletion-cost` alone.
    pub no_deletion_cost: bool,
    /// `--route-service SVC` with this Pod's IP (`--pod-ip`, `$POD_IP`).
    pub route: Option<(String, std::net::IpAddr)>,
}

/// `leasehold run`.
#[derive(Clone, Debug)]
pub struct RunArgs {
    /// The lock.
    pub lock: LockArgs,
    /// `--id`, if given.
    pub id: Option<String>,
    /// The timing from `--ttl`, `--lease-duration`, `--renew-deadline`, `--retry-period`.
    pub timing: leasehold::Timing,
    /// The command after `--`.
    pub command: Vec<OsString>,
    /// Fault injection only (hidden flag `--x-clock-offset`, refused unless
    /// `LEASEHOLD_FAULT_INJECTION=1` is set): shift the wall-clock time written into records, to
    /// show that a candidate whose clock is off cannot affect expiry (`leasehold-faults`).
    pub clock_offset: Option<jiff::SignedDuration>,
    /// HTTP status, Pod label, Events.
    pub sidecar: SidecarArgs,
    /// `--health-cmd` / `--health-url` and their settings, if given.
    pub health: Option<crate::health::HealthArgs>,
}

/// `leasehold status`.
#[derive(Clone, Debug)]
pub struct StatusArgs {
    /// The lock.
    pub lock: LockArgs,
    /// `--json`.
    pub json: bool,
}

/// `leasehold step-down`.
#[derive(Clone, Debug)]
pub struct StepDownArgs {
    /// `--control ADDR`: the sidecar's control address.
    pub control: std::net::SocketAddr,
    /// `--hold-off DUR`; `None`: the sidecar's lease duration.
    pub hold_off: Option<Duration>,
    /// `--name NAME`: the election the sidecar must be in, if given.
    pub name: Option<String>,
    /// `--to ID`: hand over to this candidate instead of releasing.
    pub to: Option<String>,
}

/// A parsed command line.
#[derive(Debug)]
pub enum Cli {
    /// `leasehold run ...`
    Run(Box<RunArgs>),
    /// `leasehold status ...`
    Status(StatusArgs),
    /// `leasehold step-down ...`
    StepDown(StepDownArgs),
    /// The hidden watchdog process (`leasehold __watchdog PGID GRACE_MS`).
    Watchdog {
        /// The child's process group.
        pgid: i32,
        /// Time between SIGTERM and SIGKILL.
        grace: Duration,
    },
    /// `--help`.
    Help,
    /// `--version`.
    Version,
}

/// The help text.
pub const HELP: &str = "\
leasehold: leader election for Kubernetes workloads and etcd (active/standby for any program)

USAGE:
  leasehold run --name NAME [--namespace NS] [--id ID] [--backend kube|file|etcd] [--file PATH]
                [--kubeconfig PATH] [--lock-type TYPE] [--lease-duration DUR]
                [--renew-deadline DUR] [--retry-period DUR] [--ttl DUR] [--http ADDR]
                [--ready-when observed|leader] [--label-pod] [--pod-name POD]
                [--label-key KEY] [--no-events] [--control ADDR]
                [--health-cmd CMD | --health-url URL] [--health-period DUR]
                [--health-timeout DUR] [--health-failures N] [-- COMMAND [ARGS...]]
  leasehold status --name NAME [--namespace NS] [--backend kube|file|etcd] [--file PATH]
                [--kubeconfig PATH] [--lock-type TYPE] [--json]
  (etcd: [--endpoints URLS] [--etcd-ca PATH] [--etcd-cert PATH --etcd-key PATH]
         [--etcd-user NAME [--etcd-password-file PATH]])
  leasehold step-down --control ADDR [--hold-off DUR | --to ID] [--name NAME]

OPTIONS:
  --name NAME           election name: the Lease's name, the file's stem, or the etcd
                        election's name (its keys' prefix, as in `etcdctl elect NAME`) (required)
  --namespace NS        Lease namespace (default: the Pod's own namespace, else `default`)
  --id ID               this candidate's identity (default: $HOSTNAME; with the file or
                        etcd backend and no --id, $HOSTNAME-PID so local candidates differ)
  --backend BACKEND     kube (default), file, or etcd
  --file PATH           record file for --backend file (default: leasehold-NAME.json in
                        $XDG_RUNTIME_DIR, else $TMPDIR)
  --endpoints URLS      (etcd) comma-separated etcd endpoints (default $ETCDCTL_ENDPOINTS, else
                        http://127.0.0.1:2379); host:port takes https:// with TLS flags
  --etcd-ca PATH        (etcd) CA bundle for the servers' certificates (default: system roots)
  --etcd-cert PATH      (etcd) client certificate, with --etcd-key PATH, its private key
  --etcd-user NAME      (etcd) authenticate as NAME; the password is read from
                        --etcd-password-file PATH, else $ETCDCTL_PASSWORD
  --kubeconfig PATH     kubeconfig (default: $KUBECONFIG, ~/.kube/config, then in-cluster)
  --lock-type TYPE      kube lock object: leases (default), configmaps, endpoints, or the
                        migration pairs configmapsleases, endpointsleases
  --lease-duration DUR  how long standbys wait after the last change they saw (default 15s;
                        whole seconds)
  --renew-deadline DUR  leader steps down if no renewal succeeded for this long (default 10s)
  --retry-period DUR    retry delay; the leader renews every renew-deadline/2, never more
                        often than this (default 2s)
  --ttl DUR             sets all three in client-go's ratio 15:10:2
                        (lease = TTL, renew deadline = TTL*2/3, retry period = TTL*2/15)
  --http ADDR           serve GET / (JSON status), /healthz, /readyz, /metrics on ADDR
                        (e.g. 0.0.0.0:4040 or :4040)
  --ready-when WHEN     /readyz is ready once the lock is observed (`observed`, default),
                        once any candidate leads (`elected`), or only while leading (`leader`)
  --label-pod           label this Pod `KEY=leader|standby` on every transition (kube)
  --pod-name POD        the Pod to label (implies --label-pod; default $ELECTOR_POD_NAME, which
                        also turns labels on, then $HOSTNAME)
  --label-key KEY       the Pod label key (default k8s-elector/status)
  --no-events           do not record Kubernetes Events on the lock object
  --no-deletion-cost    with a Pod to label, do not set its controller.kubernetes.io/
                        pod-deletion-cost (the leader's Pod gets the highest, so a rolling
                        update or scale-down removes standbys first and moves leadership once)
  --route-service SVC   (kube) each new leader points the selector-less Service SVC at its own
                        Pod IP (EndpointSlice SVC-leader, one endpoint, fenced writes), so a
                        leader cut off from the API server drops out without its cooperation
  --pod-ip IP           this Pod's IP for --route-service (default $POD_IP)
  --control ADDR        (run) serve POST /step-down on ADDR, which must be a loopback address
                        (127.0.0.1:PORT, [::1]:PORT): requests there move leadership and carry
                        no authentication, so they are never served on --http
  --health-cmd CMD      contend only while this shell command (/bin/sh -c) exits 0; a leader
                        whose probe fails --health-failures times in a row steps down
  --health-url URL      the same with GET on an http:// URL (2xx is healthy)
  --health-period DUR   how often the probe runs (default 5s)
  --health-timeout DUR  a probe that takes longer fails and is killed (default 2s)
  --health-failures N   failures in a row that make a healthy candidate unhealthy (default 3);
                        a new candidate contends only once its first probe has passed
  --hold-off DUR        (step-down) do not contend again for this long (default: the sidecar's
                        lease duration)
  --to ID               (step-down) hand over to the candidate ID: it leads within
                        milliseconds and no other can take the lock in between (file backend)
  --json                (status) print JSON
  -h, --help            this help
  -V, --version         version

DURATIONS: 500ms, 2s, 1m, 1m30s, 1h.

`step-down` asks the sidecar at --control to step down: its command is stopped, then the lease
is released so that a standby takes over at once. With --name, only if the sidecar is in that
election.

With a COMMAND, leasehold starts it when it becomes leader (own process group, env
LEASEHOLD_NAME, LEASEHOLD_IDENTITY, LEASEHOLD_FENCING_TOKEN), stops it (SIGTERM, then SIGKILL)
before the lease can expire for anyone else, and exits with its exit code if it ends by itself.

EXIT CODES: 0 ok; 64 bad flag or config; 127 or 126 the command is not found or not
executable; 1 runtime failure; otherwise the child's code.
";

/// Parses a duration like `500ms`, `2s`, `1m30s`, `1h`.
///
/// # Errors
/// A message saying what is wrong with `s`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    if s.is_empty() {
        return Err("empty duration".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(format!(
                "`{s}` is not a duration (expected e.g. 500ms, 2s, 1m)"
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("`{s}`: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let d = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => n
                .checked_mul(60)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("`{s}`: too large"))?,
            "h" => n
                .checked_mul(3600)
                .map(Duration::from_secs)
                .ok_or_else(|| format!("`{s}`: too large"))?,
            "" => return Err(format!("`{s}` has no unit (use ms, s, m or h)")),
            other => {
                return Err(format!(
                    "`{s}` has unknown unit `{other}` (use ms, s, m or h)"
                ));
            }
        };
        total = total
            .checked_add(d)
            .ok_or_else(|| format!("`{s}`: too large"))?;
    }
    Ok(total)
}

/// Parses the arguments after the program name.
///
/// # Errors
/// A [`UsageError`] naming the flag that is wrong.
pub fn parse(args: impl IntoIterator<Item = OsString>) -> Result<Cli, UsageError> {
    use lexopt::Arg::{Long, Short, Value};
    let usage = |m: String| UsageError(m);
    let mut parser = lexopt::Parser::from_args(args);
    let sub = match parser.next().map_err(|e| usage(e.to_string()))? {
        None => {
            return Err(usage(
                "missing subcommand (run or status); see --help".into(),
            ));
        }
        Some(Short('h') | Long("help")) => return Ok(Cli::Help),
        Some(Short('V') | Long("version")) => return Ok(Cli::Version),
        Some(Value(v)) if v == "help" => return Ok(Cli::Help),
        Some(Value(v)) => v.to_string_lossy().into_owned(),
        Some(other) => {
            return Err(usage(format!(
                "unknown flag `{}`; expected a subcommand (run or status), see --help",
                flag_name(&other)
            )));
        }
    };
    match sub.as_str() {
        "__watchdog" => {
            let rest: Vec<String> = parser
                .raw_args()
                .map_err(|e| usage(e.to_string()))?
                .map(|a| a.to_string_lossy().into_owned())
                .collect();
            let [pgid, grace] = rest.as_slice() else {
                return Err(usage("__watchdog PGID GRACE_MS".into()));
            };
            let pgid = pgid
                .parse()
                .map_err(|_| usage("__watchdog: bad PGID".into()))?;
            let grace = grace
                .parse()
                .map(Duration::from_millis)
                .map_err(|_| usage("__watchdog: bad GRACE_MS".into()))?;
            return Ok(Cli::Watchdog { pgid, grace });
        }
        "run" | "status" => {}
        "step-down" => return parse_step_down(&mut parser),
        other => {
            return Err(usage(format!(
                "unknown subcommand `{other}` (expected run, status or step-down)"
            )));
        }
    }
    let is_run = sub == "run";

    let mut name = None;
    let mut namespace = None;
    let mut id = None;
    let mut backend = Backend::Kube;
    let mut file = None;
    let mut kubeconfig = None;
    let mut endpoints: Option<String> = None;
    let (mut etcd_ca, mut etcd_cert, mut etcd_key) = (None, None, None);
    let (mut etcd_user, mut etcd_password_file) = (None, None);
    let mut ttl = None;
    let mut lease = None;
    let mut renew = None;
    let mut retry = None;
    let mut json = false;
    let mut lock_type = None;
    let mut http = None;
    let mut control = None;
    let (mut health_cmd, mut health_url, mut health_period, mut health_timeout) =
        (None, None, None, None);
    let mut health_failures = None;
    let mut ready_when = ReadyWhen::default();
    let mut label_pod = false;
    let mut pod_name = None;
    let mut label_key = None;
    let mut no_events = false;
    let mut no_deletion_cost = false;
    let (mut route_service, mut pod_ip) = (None, None);
    let mut command = Vec::new();
    let mut clock_offset = None;
    // Every flag once: with two values, which one wins is a guess the user should not have to
    // make (a repeated `--name` in a manifest is a mistake, not an override).
    let mut seen: Vec<String> = Vec::new();
    let fault_injection = std::env::var_os("LEASEHOLD_FAULT_INJECTION").is_some_and(|v| v == "1");

    loop {
        // The command after `--` is taken as it is, bytes and all; lexopt would hand back its
        // words as plain values, which could not be told from a stray argument.
        let mut raw = parser.raw_args().map_err(|e| usage(e.to_string()))?;
        if raw.peek().is_some_and(|a| a == "--") {
            raw.next();
            if !is_run {
                return Err(usage("`status` takes no command".into()));
            }
            command.extend(raw);
            if command.is_empty() {
                return Err(usage(
                    "`--` must be followed by a command (leave out `--` to only contend)".into(),
                ));
            }
            break;
        }
        let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? else {
            break;
        };
        let flag = match arg {
            Short('h') | Long("help") => return Ok(Cli::Help),
            Long(l) => format!("--{l}"),
            Short(c) => {
                return Err(usage(format!(
                    "unknown flag `-{c}` for `{sub}`; see --help"
                )));
            }
            Value(v) => {
                return Err(usage(format!(
                    "unexpected argument `{}` (put the command after `--`)",
                    v.to_string_lossy()
                )));
            }
        };
        if seen.contains(&flag) {
            return Err(usage(format!("{flag} is given twice")));
        }
        seen.push(flag.clone());
        let switch = match flag.as_str() {
            "--json" if !is_run => Some(&mut json),
            "--label-pod" if is_run => Some(&mut label_pod),
            "--no-events" if is_run => Some(&mut no_events),
            "--no-deletion-cost" if is_run => Some(&mut no_deletion_cost),
            _ => None,
        };
        if let Some(on) = switch {
            if parser.optional_value().is_some() {
                return Err(usage(format!("{flag} takes no value")));
            }
            *on = true;
            continue;
        }
        let known_run = [
            "--id",
            "--lease-duration",
            "--renew-deadline",
            "--retry-period",
            "--ttl",
            "--x-clock-offset",
            "--http",
            "--control",
            "--route-service",
            "--pod-ip",
            "--health-cmd",
            "--health-url",
            "--health-period",
            "--health-timeout",
            "--health-failures",
            "--ready-when",
            "--pod-name",
            "--label-key",
        ];
        let known_all = [
            "--name",
            "--namespace",
            "--backend",
            "--file",
            "--kubeconfig",
            "--lock-type",
            "--endpoints",
            "--etcd-ca",
            "--etcd-cert",
            "--etcd-key",
            "--etcd-user",
            "--etcd-password-file",
        ];
        let hidden = flag == "--x-clock-offset" && !fault_injection;
        if hidden
            || !(known_all.contains(&flag.as_str())
                || (is_run && known_run.contains(&flag.as_str())))
        {
            return Err(usage(format!(
                "unknown flag `{flag}` for `{sub}`; see --help"
            )));
        }
        let raw_value = parser
            .value()
            .map_err(|_| usage(format!("{flag} needs a value")))?;
        // Paths stay as the OS gave them; every other value is text.
        let path = || PathBuf::from(raw_value.clone());
        let value = raw_value.to_str().map(str::to_owned).ok_or_else(|| {
            usage(format!(
                "{flag}: `{}` is not valid UTF-8",
                raw_value.to_string_lossy()
            ))
        });
        let dur = |v: &str| parse_duration(v).map_err(|e| usage(format!("{flag}: {e}")));
        match flag.as_str() {
            "--file" => file = Some(path()),
            "--kubeconfig" => kubeconfig = Some(path()),
            "--etcd-ca" => etcd_ca = Some(path()),
            "--etcd-cert" => etcd_cert = Some(path()),
            "--etcd-key" => etcd_key = Some(path()),
            "--etcd-password-file" => etcd_password_file = Some(path()),
            "--etcd-user" => etcd_user = Some(value?),
            "--endpoints" => endpoints = Some(value?),
            "--name" => name = Some(value?),
            "--namespace" => namespace = Some(value?),
            "--id" => id = Some(value?),
            "--backend" => {
                backend = match value?.as_str() {
                    "kube" => Backend::Kube,
                    "file" => Backend::File,
                    "etcd" => Backend::Etcd,
                    other => {
                        return Err(usage(format!(
                            "--backend: `{other}` is not kube, file or etcd"
                        )));
                    }
                }
            }
            "--lock-type" => {
                lock_type = Some(value?.parse().map_err(
                    |e: leasehold::backend::kubernetes::UnknownLockType| {
                        usage(format!("--lock-type: {e}"))
                    },
                )?);
            }
            "--http" => {
                http = Some(parse_addr(&value?).map_err(|e| usage(format!("--http: {e}")))?);
            }
            "--control" => control = Some(parse_control(&value?)?),
            "--route-service" => {
                let value = value?;
                if !is_object_name(&value) {
                    return Err(usage(format!(
                        "--route-service: `{value}` is not a valid Service name"
                    )));
                }
                route_service = Some(value);
            }
            "--pod-ip" => {
                let value = value?;
                pod_ip = Some(
                    value
                        .parse::<std::net::IpAddr>()
                        .map_err(|_| usage(format!("--pod-ip: `{value}` is not an IP address")))?,
                );
            }
            "--health-cmd" => {
                let value = value?;
                check_health_cmd(&value)?;
                health_cmd = Some(value);
            }
            "--health-url" => {
                let value = value?;
                crate::health::check_url(&value).map_err(|e| usage(format!("{flag}: {e}")))?;
                health_url = Some(value);
            }
            "--health-period" => health_period = Some(positive(&flag, dur(&value?)?)?),
            "--health-timeout" => health_timeout = Some(positive(&flag, dur(&value?)?)?),
            "--health-failures" => {
                let value = value?;
                health_failures = Some(value.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(
                    || {
                        usage(format!(
                            "{flag}: `{value}` is not a whole number of at least 1"
                        ))
                    },
                )?);
            }
            "--ready-when" => {
                ready_when = match value?.as_str() {
                    "observed" => ReadyWhen::Observed,
                    "leader" => ReadyWhen::Leader,
                    "elected" => ReadyWhen::Elected,
                    other => {
                        return Err(usage(format!(
                            "--ready-when: `{other}` is not observed, elected or leader"
                        )));
                    }
                }
            }
            "--pod-name" => {
                let value = value?;
                if !is_object_name(&value) {
                    return Err(usage(format!(
                        "--pod-name: `{value}` is not a valid Pod name"
                    )));
                }
                pod_name = Some(value);
            }
            "--label-key" => {
                let value = value?;
                if !is_label_key(&value) {
                    return Err(usage(format!(
                        "--label-key: `{value}` is not a valid label key ([prefix/]name, name at most 63 of [A-Za-z0-9._-])"
                    )));
                }
                label_key = Some(value);
            }
            "--ttl" => ttl = Some(dur(&value?)?),
            "--lease-duration" => lease = Some(dur(&value?)?),
            "--renew-deadline" => renew = Some(dur(&value?)?),
            "--retry-period" => retry = Some(dur(&value?)?),
            "--x-clock-offset" => {
                let value = value?;
                let (neg, v) = value
                    .strip_prefix('-')
                    .map_or((false, value.as_str()), |v| (true, v));
                let d = jiff::SignedDuration::try_from(dur(v)?)
                    .map_err(|e| usage(format!("{flag}: {e}")))?;
                clock_offset = Some(if neg { -d } else { d });
            }
            _ => unreachable!("checked above"),
        }
    }

    let name = name.ok_or_else(|| usage("--name is required".into()))?;
    validate_name(&name, backend)?;
    if let Some(ns) = &namespace
        && backend == Backend::Kube
        && !is_namespace_name(ns)
    {
        return Err(usage(format!(
            "--namespace: `{ns}` is not a valid namespace (lowercase letters, digits, '-', at most 63)"
        )));
    }
    if backend != Backend::File && file.is_some() {
        return Err(usage("--file applies only to --backend file".into()));
    }
    let etcd_flags = [
        ("--endpoints", endpoints.is_some()),
        ("--etcd-ca", etcd_ca.is_some()),
        ("--etcd-cert", etcd_cert.is_some()),
        ("--etcd-key", etcd_key.is_some()),
        ("--etcd-user", etcd_user.is_some()),
        ("--etcd-password-file", etcd_password_file.is_some()),
    ];
    if backend != Backend::Etcd
        && let Some((flag, _)) = etcd_flags.iter().find(|(_, set)| *set)
    {
        return Err(usage(format!("{flag} applies only to --backend etcd")));
    }
    let etcd = if backend == Backend::Etcd {
        Some(etcd_args(
            endpoints,
            etcd_ca,
            etcd_cert,
            etcd_key,
            etcd_user,
            etcd_password_file,
        )?)
    } else {
        None
    };
    if backend != Backend::Kube {
        let kube_only = [
            ("--namespace", namespace.is_some()),
            ("--kubeconfig", kubeconfig.is_some()),
            ("--lock-type", lock_type.is_some()),
            ("--label-pod", label_pod),
            ("--pod-name", pod_name.is_some()),
            ("--label-key", label_key.is_some()),
            ("--no-deletion-cost", no_deletion_cost),
            ("--route-service", route_service.is_some()),
            ("--pod-ip", pod_ip.is_some()),
        ];
        if let Some((flag, _)) = kube_only.iter().find(|(_, set)| *set) {
            return Err(usage(format!("{flag} applies only to --backend kube")));
        }
    }
    // Only Kubernetes has an object to record Events on; --no-events is harmless elsewhere
    // (a manifest shared by backends), so it is accepted and does nothing.
    let lock = LockArgs {
        name,
        namespace,
        backend,
        file,
        kubeconfig,
        lock_type: lock_type.unwrap_or_default(),
        etcd,
    };
    if !is_run {
        return Ok(Cli::Status(StatusArgs { lock, json }));
    }

    let mut timing = match ttl {
        Some(t) => leasehold::Timing::from_ttl(t),
        None => leasehold::Timing::default(),
    };
    if let Some(d) = lease {
        timing.lease_duration = d;
    }
    if let Some(d) = renew {
        timing.renew_deadline = d;
    }
    if let Some(d) = retry {
        timing.retry_period = d;
    }
    timing.validate().map_err(|e| {
        let from = |given: bool| match (given, ttl.is_some()) {
            (true, _) => "",
            (false, true) => ", from --ttl",
            (false, false) => ", the default",
        };
        usage(timing_error(
            &e,
            [
                from(lease.is_some()),
                from(renew.is_some()),
                from(retry.is_some()),
            ],
        ))
    })?;
    if let Some(id) = &id {
        if id.is_empty() {
            return Err(usage("--id must not be empty".into()));
        }
        if id.len() > 1024 || id.chars().any(char::is_control) {
            return Err(usage(
                "--id must be at most 1024 characters with no control characters".into(),
            ));
        }
    }
    // Labels are on with --label-pod, --pod-name, or ELECTOR_POD_NAME (the k8s-elector sidecar's variable).
    let env_pod = std::env::var("ELECTOR_POD_NAME")
        .ok()
        .filter(|p| !p.is_empty());
    let pod_name = if backend == Backend::Kube
        && (label_pod || pod_name.is_some() || env_pod.is_some())
    {
        let (source, name) = match (pod_name, env_pod) {
            (Some(p), _) => ("--pod-name", Some(p)),
            (None, Some(p)) => ("ELECTOR_POD_NAME", Some(p)),
            (None, None) => (
                "HOSTNAME",
                std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()),
            ),
        };
        let name = name.ok_or_else(|| {
            usage("--label-pod: no Pod name (set --pod-name, ELECTOR_POD_NAME or HOSTNAME)".into())
        })?;
        // The environment gets the same check as the flag: a bad name would only fail
        // later, on every patch.
        if !is_object_name(&name) {
            return Err(usage(format!(
                "--label-pod: the Pod name `{name}` from {source} is not a valid Pod name"
            )));
        }
        Some(name)
    } else {
        None
    };
    let route = match (route_service, pod_ip) {
        (Some(service), Some(ip)) => Some((service, ip)),
        (Some(service), None) => {
            let env = std::env::var("POD_IP").ok().filter(|v| !v.is_empty());
            let Some(env) = env else {
                return Err(usage(format!(
                    "--route-service {service} needs this Pod's IP: set --pod-ip or POD_IP (the downward API's status.podIP)"
                )));
            };
            let ip = env.parse().map_err(|_| {
                usage(format!(
                    "--route-service: POD_IP `{env}` is not an IP address"
                ))
            })?;
            Some((service, ip))
        }
        (None, Some(_)) => {
            return Err(usage("--pod-ip applies only with --route-service".into()));
        }
        (None, None) => None,
    };
    let probe = match (health_cmd, health_url) {
        (Some(_), Some(_)) => {
            return Err(usage(
                "--health-cmd and --health-url: give one probe, not both".into(),
            ));
        }
        (Some(c), None) => Some(crate::health::Probe::Command(c)),
        (None, Some(u)) => Some(crate::health::Probe::Url(u)),
        (None, None) => None,
    };
    let health = match probe {
        Some(probe) => Some(crate::health::HealthArgs {
            probe,
            period: health_period.unwrap_or(Duration::from_secs(5)),
            timeout: health_timeout.unwrap_or(Duration::from_secs(2)),
            failures: health_failures.unwrap_or(3),
        }),
        None => {
            let set = [
                ("--health-period", health_period.is_some()),
                ("--health-timeout", health_timeout.is_some()),
                ("--health-failures", health_failures.is_some()),
            ];
            if let Some((flag, _)) = set.iter().find(|(_, on)| *on) {
                return Err(usage(format!(
                    "{flag} needs a probe: --health-cmd or --health-url"
                )));
            }
            None
        }
    };
    Ok(Cli::Run(Box::new(RunArgs {
        lock,
        id,
        timing,
        command,
        clock_offset,
        health,
        sidecar: SidecarArgs {
            http,
            control,
            ready_when,
            pod_name,
            label_key: label_key.unwrap_or_else(|| "k8s-elector/status".to_owned()),
            no_events,
            no_deletion_cost,
            route,
        },
    })))
}

/// The etcd flags, checked: endpoints with their schemes, certificate and key together, a
/// password for a user. Files are read when connecting, where a missing one is named.
fn etcd_args(
    endpoints: Option<String>,
    ca: Option<PathBuf>,
    cert: Option<PathBuf>,
    key: Option<PathBuf>,
    user: Option<String>,
    password_file: Option<PathBuf>,
) -> Result<EtcdArgs, UsageError> {
    let usage = |m: String| Err(UsageError(m));
    let (list, from) = match endpoints {
        Some(e) => (e, "--endpoints"),
        None => match std::env::var("ETCDCTL_ENDPOINTS") {
            Ok(e) if !e.trim().is_empty() => (e, "ETCDCTL_ENDPOINTS"),
            _ => ("http://127.0.0.1:2379".to_owned(), "the default"),
        },
    };
    let tls = ca.is_some() || cert.is_some();
    let mut out = Vec::new();
    for e in list.split(',').map(str::trim) {
        if e.is_empty() {
            return usage(format!("{from}: `{list}` has an empty endpoint"));
        }
        let url = match e.split_once("://") {
            Some(("http" | "https", rest)) if !rest.is_empty() && !rest.contains('/') => {
                e.to_owned()
            }
            Some(_) => {
                return usage(format!(
                    "{from}: `{e}` is not an etcd endpoint (http://HOST:PORT, https://HOST:PORT or HOST:PORT)"
                ));
            }
            None if !e.contains('/') && e.contains(':') => {
                format!("{}://{e}", if tls { "https" } else { "http" })
            }
            None => {
                return usage(format!(
                    "{from}: `{e}` has no port (HOST:PORT, or a URL with http:// or https://)"
                ));
            }
        };
        out.push(url);
    }
    let https = out.iter().filter(|u| u.starts_with("https://")).count();
    if https != 0 && https != out.len() {
        return usage(format!(
            "{from}: `{list}` mixes http:// and https:// endpoints; one cluster speaks one"
        ));
    }
    if tls && https == 0 {
        let flag = if ca.is_some() {
            "--etcd-ca"
        } else {
            "--etcd-cert"
        };
        return usage(format!(
            "{flag} needs https:// endpoints, but {from} gives `{list}` (a TLS server is reached only over https://)"
        ));
    }
    let cert_key = match (cert, key) {
        (Some(c), Some(k)) => Some((c, k)),
        (None, None) => None,
        (Some(_), None) => return usage("--etcd-cert needs --etcd-key, its private key".into()),
        (None, Some(_)) => return usage("--etcd-key needs --etcd-cert, its certificate".into()),
    };
    let user = match (user, password_file) {
        (None, None) => None,
        (None, Some(_)) => {
            return usage("--etcd-password-file applies only with --etcd-user".into());
        }
        (Some(u), file) => {
            if u.is_empty() || u.contains(char::is_control) {
                return usage("--etcd-user must be a user name".into());
            }
            let password = match file {
                Some(f) => {
                    let text = std::fs::read_to_string(&f).map_err(|e| {
                        UsageError(format!("--etcd-password-file {}: {e}", f.display()))
                    })?;
                    // One line; its line break is not part of the password.
                    text.strip_suffix('\n')
                        .map(|t| t.strip_suffix('\r').unwrap_or(t))
                        .unwrap_or(&text)
                        .to_owned()
                }
                None => match std::env::var("ETCDCTL_PASSWORD") {
                    Ok(p) if !p.is_empty() => p,
                    _ => {
                        return usage(format!(
                            "--etcd-user {u} needs a password: --etcd-password-file PATH, or ETCDCTL_PASSWORD"
                        ));
                    }
                },
            };
            Some((u, Secret(password)))
        }
    };
    Ok(EtcdArgs {
        endpoints: out,
        ca,
        cert_key,
        user,
    })
}

/// A duration flag that must be above zero.
fn positive(flag: &str, d: Duration) -> Result<Duration, UsageError> {
    if d.is_zero() {
        return Err(UsageError(format!("{flag} must be above zero")));
    }
    Ok(d)
}

/// `--health-cmd`: when its first word is a plain program name (no shell syntax), it must be
/// found and executable now, so that a typo is an error at start, not a candidate that never
/// contends.
fn check_health_cmd(cmd: &str) -> Result<(), UsageError> {
    let Some(first) = cmd.split_whitespace().next() else {
        return Err(UsageError("--health-cmd must not be empty".into()));
    };
    let plain = first
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "/._-+".contains(c));
    if plain && !["exit", "test", "true", "false", "[", "command"].contains(&first) {
        crate::child::check_program(std::ffi::OsStr::new(first)).map_err(|problem| {
            UsageError(format!("--health-cmd: cannot run `{first}`: {problem}"))
        })?;
    }
    Ok(())
}

/// `--control ADDR`: a loopback address only.
fn parse_control(value: &str) -> Result<std::net::SocketAddr, UsageError> {
    let addr = parse_addr(value).map_err(|e| UsageError(format!("--control: {e}")))?;
    if !addr.ip().is_loopback() {
        return Err(UsageError(format!(
            "--control: `{value}` is not a loopback address (127.0.0.1:PORT or [::1]:PORT): requests there move leadership and carry no authentication"
        )));
    }
    Ok(addr)
}

/// `leasehold step-down --control ADDR [--hold-off DUR] [--name NAME]`.
fn parse_step_down(parser: &mut lexopt::Parser) -> Result<Cli, UsageError> {
    use lexopt::Arg::{Long, Short, Value};
    let usage = |m: String| UsageError(m);
    let (mut control, mut hold_off, mut name, mut to) = (None, None, None, None);
    while let Some(arg) = parser.next().map_err(|e| usage(e.to_string()))? {
        let flag = match arg {
            Short('h') | Long("help") => return Ok(Cli::Help),
            Long(l @ ("control" | "hold-off" | "name" | "to")) => format!("--{l}"),
            Value(v) => {
                return Err(usage(format!(
                    "unexpected argument `{}` for `step-down`",
                    v.to_string_lossy()
                )));
            }
            other => {
                return Err(usage(format!(
                    "unknown flag `{}` for `step-down`; see --help",
                    flag_name(&other)
                )));
            }
        };
        let value = parser
            .value()
            .map_err(|_| usage(format!("{flag} needs a value")))?
            .into_string()
            .map_err(|v| {
                usage(format!(
                    "{flag}: `{}` is not valid UTF-8",
                    v.to_string_lossy()
                ))
            })?;
        let slot_taken = match flag.as_str() {
            "--control" => control.replace(parse_control(&value)?).is_some(),
            "--hold-off" => hold_off
                .replace(parse_duration(&value).map_err(|e| usage(format!("{flag}: {e}")))?)
                .is_some(),
            "--to" => {
                if value.is_empty() {
                    return Err(usage("--to must name a candidate".into()));
                }
                to.replace(value).is_some()
            }
            _ => name.replace(value).is_some(),
        };
        if slot_taken {
            return Err(usage(format!("{flag} is given twice")));
        }
    }
    let control = control.ok_or_else(|| {
        usage("--control is required: the address the sidecar serves with `run --control`".into())
    })?;
    if to.is_some() && hold_off.is_some() {
        return Err(usage(
            "--hold-off and --to: a transfer's hold-off is the lease duration; give one".into(),
        ));
    }
    Ok(Cli::StepDown(StepDownArgs {
        control,
        hold_off,
        name,
        to,
    }))
}

/// The library's timing error in the CLI's words: flags instead of field names, and where a
/// value came from when the user did not give it (`from`: lease, renew deadline, retry period).
fn timing_error(e: &leasehold::ConfigError, from: [&str; 3]) -> String {
    use leasehold::ConfigError as E;
    let [lease_from, renew_from, retry_from] = from;
    match e {
        E::NotPositive { field } => format!("--{}: must be positive", field.replace('_', "-")),
        E::FractionalLease(d) => format!(
            "--lease-duration: must be whole seconds (the record stores leaseDurationSeconds), got {d:?}{lease_from}"
        ),
        E::LeaseTooLong(d) => format!(
            "--lease-duration: must be at most 2147483647s (leaseDurationSeconds is 32-bit), got {d:?}{lease_from}"
        ),
        E::LeaseNotAboveRenew { lease, renew } => format!(
            "--lease-duration ({lease:?}{lease_from}) must be greater than --renew-deadline ({renew:?}{renew_from})"
        ),
        E::MarginUnderASecond { lease, renew } => format!(
            "--lease-duration ({lease:?}{lease_from}) must exceed --renew-deadline ({renew:?}{renew_from}) by at least 1s when the renew deadline is under 2s: the leader may then renew more than once a second, and client-go sees a record change at most once a second"
        ),
        E::RenewNotAboveRetry { renew, retry } => format!(
            "--renew-deadline ({renew:?}{renew_from}) must be greater than 1.2 × --retry-period ({retry:?}{retry_from})"
        ),
        E::EmptyIdentity => "--id must not be empty".into(),
        other => other.to_string(),
    }
}

/// How the user wrote a flag lexopt split off.
fn flag_name(arg: &lexopt::Arg<'_>) -> String {
    match arg {
        lexopt::Arg::Short(c) => format!("-{c}"),
        lexopt::Arg::Long(l) => format!("--{l}"),
        lexopt::Arg::Value(v) => v.to_string_lossy().into_owned(),
    }
}

/// Parses `HOST:PORT`, `:PORT` (all interfaces) or `PORT`.
fn parse_addr(s: &str) -> Result<std::net::SocketAddr, String> {
    let full = if let Some(port) = s.strip_prefix(':') {
        format!("0.0.0.0:{port}")
    } else if s.bytes().all(|b| b.is_ascii_digit()) && !s.is_empty() {
        format!("0.0.0.0:{s}")
    } else {
        s.to_owned()
    };
    full.parse().map_err(|_| {
        format!("`{s}` is not an address (expected e.g. 0.0.0.0:4040, :4040 or [::1]:4040)")
    })
}
fn is_label_key(s: &str) -> bool {
    let (prefix, name) = match s.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, s),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_object_name)
}
fn validate_name(name: &str, backend: Backend) -> Result<(), UsageError> {
    let ok = match backend {
        // A DNS subdomain, as Kubernetes requires of object names.
        Backend::Kube => is_object_name(name),
        Backend::File => !name.is_empty() && !name.contains('/') && name != "." && name != "..",
        // Any text: etcd keys are bytes, and etcdctl takes any name.
        Backend::Etcd => !name.is_empty() && name.len() <= 1024 && !name.contains(char::is_control),
    };
    if ok {
        Ok(())
    } else {
        Err(UsageError(match backend {
            Backend::Kube => format!(
                "--name: `{name}` is not a valid Lease name (lowercase letters, digits, '-' and '.', at most 253)"
            ),
            Backend::File => format!("--name: `{name}` is not a valid file name"),
            Backend::Etcd => format!(
                "--name: `{}` is not a valid election name (1 to 1024 characters, no control characters)",
                name.escape_debug()
            ),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Result<Cli, UsageError> {
        parse(s.split_whitespace().map(OsString::from))
    }

    #[test]
    fn etcd_flags_take_etcdctls_forms_and_name_what_is_wrong() {
        let Ok(Cli::Run(r)) = p("run --name my/app --backend etcd --endpoints h1:2379,h2:2379")
        else {
            panic!()
        };
        let e = r.lock.etcd.unwrap();
        assert_eq!(e.endpoints, ["http://h1:2379", "http://h2:2379"]);
        // With TLS flags, host:port means https.
        let Ok(Cli::Status(s)) = p(
            "status --name a --backend etcd --endpoints h:2379 --etcd-ca ca.pem --etcd-cert c.pem --etcd-key k.pem",
        ) else {
            panic!()
        };
        let e = s.lock.etcd.unwrap();
        assert_eq!(e.endpoints, ["https://h:2379"]);
        assert!(e.cert_key.is_some());
        let err = |s: &str| p(s).unwrap_err().0;
        assert!(
            err("run --name a --backend etcd --label-pod")
                .contains("applies only to --backend kube")
        );
        assert!(
            err("run --name a --backend kube --endpoints h:1").contains("only to --backend etcd")
        );
        assert!(err("run --name a --backend etcd --file f").contains("only to --backend file"));
        assert!(
            err("run --name a --backend etcd --etcd-password-file f")
                .contains("only with --etcd-user")
        );
        // A password never reaches Debug output (logs).
        let secret = format!("{:?}", Secret("hunter2".into()));
        assert!(!secret.contains("hunter2"));
    }

    #[test]
    fn sidecar_flags() {
        let Ok(Cli::Run(r)) = p(
            "run --name a --http :4040 --ready-when leader --pod-name p-1 --label-key example.com/role --lock-type configmapsleases --no-events",
        ) else {
            panic!()
        };
        assert_eq!(r.sidecar.http, Some("0.0.0.0:4040".parse().unwrap()));
        assert_eq!(r.sidecar.ready_when, ReadyWhen::Leader);
        assert_eq!(r.sidecar.pod_name.as_deref(), Some("p-1"));
        assert_eq!(r.sidecar.label_key, "example.com/role");
        assert!(r.sidecar.no_events);
        assert_eq!(
            r.lock.lock_type,
            leasehold::backend::kubernetes::LockType::ConfigMapsLeases
        );
        let e = |s: &str| p(s).unwrap_err().0;
        assert!(
            e("run --name a --lock-type secrets")
                .contains("--lock-type: unknown lock type `secrets`")
        );
        assert!(e("run --name a --http nowhere").contains("--http: `nowhere`"));
        assert!(e("run --name a --ready-when always").contains("--ready-when"));
        assert!(e("run --name a --label-key bad/key/").contains("--label-key"));
        assert!(e("run --name a --pod-name Bad_Pod").contains("--pod-name"));
        assert!(
            e("run --name a --backend file --label-pod")
                .contains("--label-pod applies only to --backend kube")
        );
        assert!(e("run --name a --label-pod=yes").contains("--label-pod takes no value"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2s"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert!(parse_duration("2").unwrap_err().contains("no unit"));
        assert!(parse_duration("2x").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
        assert!(parse_duration("99999999999999999999s").is_err());
    }

    #[test]
    fn run_with_command() {
        let Cli::Run(r) = p("run --name a --backend file --ttl 3s -- sleep 10").unwrap() else {
            panic!()
        };
        assert_eq!(r.lock.backend, Backend::File);
        assert_eq!(r.timing.lease_duration, Duration::from_secs(3));
        assert_eq!(r.timing.renew_deadline, Duration::from_secs(2));
        assert_eq!(r.timing.retry_period, Duration::from_millis(400));
        assert_eq!(
            r.command,
            vec![OsString::from("sleep"), OsString::from("10")]
        );
    }

    #[test]
    fn errors_name_the_flag() {
        let e = |s: &str| p(s).unwrap_err().0;
        assert!(e("run").contains("--name is required"));
        assert!(e("run --name a --lease-duration 5").contains("--lease-duration"));
        assert!(e("run --name a --retry-period=abc").contains("--retry-period"));
        assert_eq!(
            e("run --name a --lease-duration 5s --renew-deadline 6s"),
            "--lease-duration (5s) must be greater than --renew-deadline (6s)"
        );
        assert_eq!(
            e("run --name a --renew-deadline 15s"),
            "--lease-duration (15s, the default) must be greater than --renew-deadline (15s)"
        );
        assert_eq!(
            e("run --name a --ttl 3s --retry-period 2s"),
            "--renew-deadline (2s, from --ttl) must be greater than 1.2 × --retry-period (2s)"
        );
        assert_eq!(
            e("run --name a --retry-period 0s"),
            "--retry-period: must be positive"
        );
        assert_eq!(e("run --name a --name b"), "--name is given twice");
        assert_eq!(e("status --name a --json --json"), "--json is given twice");
        assert_eq!(e("run --name a --ttl=3s --ttl 4s"), "--ttl is given twice");
        assert!(e("run --name a --").starts_with("`--` must be followed by a command"));
        assert_eq!(
            e("run --name a --backend file --namespace ns"),
            "--namespace applies only to --backend kube"
        );
        assert_eq!(
            e("status --name a --backend file --kubeconfig k"),
            "--kubeconfig applies only to --backend kube"
        );
        // The fault-injection knob is not a flag unless LEASEHOLD_FAULT_INJECTION=1.
        assert!(e("run --name a --x-clock-offset 5m").contains("unknown flag `--x-clock-offset`"));
        assert!(
            e("run --name a --lease-duration 1500ms --renew-deadline 1s --retry-period 100ms")
                .contains("--lease-duration")
        );
        assert!(e("run --name a --bogus 1").contains("--bogus"));
        assert!(e("run --name Bad_Name").contains("--name"));
        assert!(e("run --name a --backend etcd9").contains("--backend"));
        assert!(e("status --name a --id x").contains("--id"));
        assert!(e("run --name a --id").contains("--id needs a value"));
        assert!(e("run --name a -x").contains("unknown flag `-x`"));
        assert!(e("run --name a stray").contains("unexpected argument `stray`"));
    }

    /// A path is passed on as the OS gave it, even when it is not UTF-8; any other value that
    /// is not UTF-8 is an error naming its flag, never a silently mangled name.
    #[test]
    fn arguments_that_are_not_utf8() {
        use std::os::unix::ffi::OsStringExt as _;
        let odd = OsString::from_vec(b"/tmp/caf\xe9.json".to_vec());
        let args = |flag: &'static str| -> Vec<OsString> {
            ["run", "--name", "a", "--backend", "file", flag]
                .into_iter()
                .map(OsString::from)
                .chain([odd.clone(), "--".into(), odd.clone()])
                .collect()
        };
        let Ok(Cli::Run(r)) = parse(args("--file")) else {
            panic!("a non-UTF-8 --file is accepted")
        };
        assert_eq!(r.lock.file.as_deref(), Some(std::path::Path::new(&odd)));
        assert_eq!(r.command, vec![odd.clone()], "the command is kept as given");
        let e = parse(args("--id")).unwrap_err().0;
        assert!(
            e.starts_with("--id: ") && e.contains("not valid UTF-8"),
            "{e}"
        );
    }
}
