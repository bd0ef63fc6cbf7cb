//! Real servers on 127.0.0.1 for integration tests: etcd and kube-apiserver, plus the client-go
//! peers, all built from their Go modules by `scripts/build-servers.sh` (cached after the first
//! run).
//!
//! Every server process is started through `setpriv --pdeathsig KILL` from a thread that lives
//! as long as the process, so when the test binary exits, passes, panics or is killed, the kernel
//! kills the servers too: nothing is left running.

use std::{
    fs,
    io::{BufRead as _, BufReader},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Mutex, OnceLock, mpsc},
    time::Duration,
};

/// The built binaries.
#[derive(Clone, Debug)]
pub struct Bins {
    /// etcd.
    pub etcd: PathBuf,
    /// kube-apiserver.
    pub kube_apiserver: PathBuf,
    /// client-go's `examples/leader-election`, as shipped.
    pub leader_election: PathBuf,
    /// Our client-go peer with durations as flags (`crates/leasehold-testing/go/client-go-peer`).
    pub go_elector: PathBuf,
}

/// Builds (first time) or finds (cached) the server binaries.
///
/// # Panics
/// If the build fails: the real-server tests cannot run without them, and must not be skipped.
pub fn bins() -> Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let root = workspace_root();
        let out = Command::new("bash")
            .arg(root.join("scripts/build-servers.sh"))
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/build-servers.sh");
        assert!(
            out.status.success(),
            "scripts/build-servers.sh failed: {}",
            out.status
        );
        let dir = String::from_utf8_lossy(&out.stdout)
            .lines()
            .last()
            .unwrap_or_default()
            .trim()
            .to_owned();
        let dir = PathBuf::from(dir);
        let bins = Bins {
            etcd: dir.join("etcd"),
            kube_apiserver: dir.join("kube-apiserver"),
            leader_election: dir.join("leader-election"),
            go_elector: dir.join("go-elector"),
        };
        for b in [
            &bins.etcd,
            &bins.kube_apiserver,
            &bins.leader_election,
            &bins.go_elector,
        ] {
            assert!(b.exists(), "{} missing after build-servers.sh", b.display());
        }
        bins
    })
    .clone()
}

/// The workspace's root directory.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("workspace root")
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// A process started by the harness; killed when the test process exits.
#[derive(Debug)]
pub struct Proc {
    pid: i32,
    exited: Mutex<mpsc::Receiver<Option<i32>>>,
    name: String,
}

// === impl Proc ===

impl Proc {
    /// Starts `cmd` tied to this test process's lifetime; stdout and stderr go to `log`.
    ///
    /// # Panics
    /// If it cannot be started.
    pub fn spawn(name: &str, program: &Path, args: &[String], log: &Path) -> Self {
        let (pid_tx, pid_rx) = mpsc::channel();
        let (exit_tx, exit_rx) = mpsc::channel();
        let program = program.to_owned();
        let args = args.to_vec();
        let log = log.to_owned();
        std::thread::Builder::new()
            .name(format!("proc-{name}"))
            .spawn(move || {
                let out = fs::File::create(&log).expect("log file");
                let err = out.try_clone().expect("log file");
                let child = Command::new("setpriv")
                    .args(["--pdeathsig", "KILL", "--"])
                    .arg(&program)
                    .args(&args)
                    .stdin(Stdio::null())
                    .stdout(out)
                    .stderr(err)
                    .spawn();
                let mut child = match child {
                    Ok(c) => c,
                    Err(e) => {
                        let _ = pid_tx.send(Err(e));
                        return;
                    }
                };
                let _ = pid_tx.send(Ok(child.id()));
                // This thread is the child's parent for PR_SET_PDEATHSIG: it waits here as long
                // as the child lives.
                let status = child.wait().ok().and_then(|s| s.code());
                let _ = exit_tx.send(status);
            })
            .expect("spawn thread");
        let pid = pid_rx
            .recv()
            .expect("spawn result")
            .unwrap_or_else(|e| panic!("cannot start {name}: {e}"));
        Self {
            pid: i32::try_from(pid).expect("pid"),
            exited: Mutex::new(exit_rx),
            name: name.to_owned(),
        }
    }

    /// Sends `sig`.
    pub fn signal(&self, sig: rustix::process::Signal) {
        if let Some(pid) = rustix::process::Pid::from_raw(self.pid) {
            let _ = rustix::process::kill_process(pid, sig);
        }
    }

    /// The process id.
    pub fn pid(&self) -> i32 {
        self.pid
    }

    /// Kills it and waits for it to exit.
    pub fn kill(&self) {
        self.signal(rustix::process::Signal::KILL);
        if let Ok(rx) = self.exited.lock() {
            let _ = rx.recv_timeout(Duration::from_secs(10));
        }
    }

    /// Whether it has exited, without waiting.
    pub fn try_exited(&self) -> Option<Option<i32>> {
        self.exited.lock().ok()?.try_recv().ok()
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

/// A user of the test API server and its bearer token.
pub const ADMIN_TOKEN: &str = "leasehold-admin-token";
/// A user with no permissions at all (for RBAC-denial tests).
pub const NOBODY_TOKEN: &str = "leasehold-nobody-token";

/// A real etcd + kube-apiserver on 127.0.0.1.
#[derive(Debug)]
pub struct KubeServer {
    dir: PathBuf,
    port: u16,
    etcd_port: u16,
    etcd_peer: Option<u16>,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
}

// === impl KubeServer ===

impl KubeServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers ok.
    ///
    /// # Panics
    /// If either does not come up within 90 s (the log paths are in the message).
    pub async fn start() -> Self {
        let bins = bins();
        let base = std::env::temp_dir().join("leasehold-harness");
        clean_stale(&base);
        let dir = base.join(format!("{}-{}", std::process::id(), free_port()));
        fs::create_dir_all(&dir).expect("harness dir");
        make_certs(&dir);
        fs::write(
            dir.join("tokens.csv"),
            format!("{ADMIN_TOKEN},admin,admin-uid,\"system:masters\"\n{NOBODY_TOKEN},nobody,nobody-uid\n"),
        )
        .expect("tokens.csv");
        let mut s = Self {
            dir,
            port: free_port(),
            etcd_port: free_port(),
            etcd_peer: None,
            etcd: None,
            apiserver: None,
        };
        s.write_kubeconfig("admin", ADMIN_TOKEN);
        s.write_kubeconfig("nobody", NOBODY_TOKEN);
        s.start_etcd(&bins);
        s.start_apiserver_with(&bins).await;
        s
    }

    fn start_etcd(&mut self, bins: &Bins) {
        let peer = *self.etcd_peer.get_or_insert_with(free_port);
        let data = self.dir.join("etcd-data");
        let args: Vec<String> = vec![
            "--name=default".into(),
            format!("--data-dir={}", data.display()),
            format!("--listen-client-urls=http://127.0.0.1:{}", self.etcd_port),
            format!(
                "--advertise-client-urls=http://127.0.0.1:{}",
                self.etcd_port
            ),
            format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
            format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
            "--log-level=warn".into(),
        ];
        self.etcd = Some(Proc::spawn(
            "etcd",
            &bins.etcd,
            &args,
            &self.dir.join("etcd.log"),
        ));
    }

    fn apiserver_args(&self) -> Vec<String> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        vec![
            "--advertise-address=127.0.0.1".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={}", self.port),
            format!("--etcd-servers=http://127.0.0.1:{}", self.etcd_port),
            format!("--tls-cert-file={}", d("server.crt")),
            format!("--tls-private-key-file={}", d("server.key")),
            format!("--client-ca-file={}", d("ca.crt")),
            format!("--token-auth-file={}", d("tokens.csv")),
            "--authorization-mode=Node,RBAC".into(),
            "--endpoint-reconciler-type=none".into(),
            "--service-cluster-ip-range=10.96.0.0/12".into(),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", d("sa.pub")),
            format!("--service-account-signing-key-file={}", d("sa.key")),
            format!("--cert-dir={}", d("certs")),
            // Enables spec.strategy and spec.preferredHolder on Leases, so tests can show an
            // update keeps them (with the gate off the server drops them itself).
            "--feature-gates=CoordinatedLeaderElection=true".into(),
            "--runtime-config=coordination.k8s.io/v1beta1=true".into(),
            "--v=0".into(),
        ]
    }

    async fn start_apiserver_with(&mut self, bins: &Bins) {
        let log = self.dir.join("kube-apiserver.log");
        self.apiserver = Some(Proc::spawn(
            "kube-apiserver",
            &bins.kube_apiserver,
            &self.apiserver_args(),
            &log,
        ));
        self.wait_ready(Duration::from_secs(90)).await;
    }

    /// Waits until `/readyz` answers ok.
    ///
    /// # Panics
    /// After `limit`.
    pub async fn wait_ready(&self, limit: Duration) {
        let client = self.client("admin").await;
        let start = tokio::time::Instant::now();
        loop {
            let r = http_get(&client, "/readyz").await;
            if r.as_deref() == Ok("ok") {
                return;
            }
            if start.elapsed() > limit {
                panic!(
                    "kube-apiserver not ready after {limit:?} ({r:?}); logs: {}",
                    self.dir.display()
                );
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Kills kube-apiserver (etcd keeps running).
    pub fn stop_apiserver(&mut self) {
        if let Some(p) = self.apiserver.take() {
            p.kill();
        }
    }

    /// Starts kube-apiserver again on the same port and waits until it is ready.
    pub async fn restart_apiserver(&mut self) {
        self.stop_apiserver();
        let bins = bins();
        self.start_apiserver_with(&bins).await;
    }

    /// Kills etcd (kube-apiserver keeps running and fails its requests).
    pub fn stop_etcd(&mut self) {
        if let Some(p) = self.etcd.take() {
            p.kill();
        }
    }

    /// Starts etcd again on the same ports and data directory.
    pub fn restart_etcd(&mut self) {
        self.stop_etcd();
        let bins = bins();
        self.start_etcd(&bins);
    }

    /// The kube-apiserver process, to freeze (SIGSTOP) and thaw it.
    pub fn apiserver(&self) -> Option<&Proc> {
        self.apiserver.as_ref()
    }

    /// The etcd process id, if running.
    pub fn etcd_pid(&self) -> Option<i32> {
        self.etcd.as_ref().map(Proc::pid)
    }

    /// The HTTPS port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory with certificates, kubeconfigs and logs.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The kubeconfig of `user` (`admin` or `nobody`, or any written by
    /// [`write_kubeconfig`](Self::write_kubeconfig)).
    pub fn kubeconfig(&self, user: &str) -> PathBuf {
        self.dir.join(format!("kubeconfig-{user}"))
    }

    /// Writes a kubeconfig for a bearer token; returns its path.
    pub fn write_kubeconfig(&self, user: &str, token: &str) -> PathBuf {
        self.write_kubeconfig_for(user, token, self.port)
    }

    /// Writes a kubeconfig for a bearer token against another port on 127.0.0.1 (a proxy).
    pub fn write_kubeconfig_for(&self, user: &str, token: &str, port: u16) -> PathBuf {
        let path = self.kubeconfig(user);
        let yaml = format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{port}\n    certificate-authority: {ca}\nusers:\n- name: {user}\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: {user}\n    namespace: default\ncurrent-context: test\n",
            ca = self.dir.join("ca.crt").display(),
        );
        fs::write(&path, yaml).expect("kubeconfig");
        path
    }

    /// A kube client for `user`.
    pub async fn client(&self, user: &str) -> kube::Client {
        let kc = kube::config::Kubeconfig::read_from(self.kubeconfig(user)).expect("kubeconfig");
        let mut config =
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .expect("config");
        config.default_retry = false;
        config.read_timeout = Some(Duration::from_secs(5));
        kube::Client::try_from(config).expect("client")
    }

    /// `apiserver_request_total` for `resource`, summed by verb, from `/metrics`.
    pub async fn request_counts(&self, resource: &str) -> std::collections::BTreeMap<String, f64> {
        let client = self.client("admin").await;
        let text = http_get(&client, "/metrics").await.unwrap_or_default();
        let mut out = std::collections::BTreeMap::new();
        for line in text
            .lines()
            .filter(|l| l.starts_with("apiserver_request_total{"))
        {
            if !line.contains(&format!("resource=\"{resource}\"")) {
                continue;
            }
            let verb = line
                .split("verb=\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or("?");
            let value: f64 = line
                .rsplit(' ')
                .next()
                .and_then(|v| v.parse().ok())
                .unwrap_or(0.0);
            *out.entry(verb.to_owned()).or_default() += value;
        }
        out
    }
}

impl Drop for KubeServer {
    fn drop(&mut self) {
        if let Some(p) = self.apiserver.take() {
            p.kill();
        }
        if let Some(p) = self.etcd.take() {
            p.kill();
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

async fn http_get(client: &kube::Client, path: &str) -> Result<String, String> {
    let req = http::Request::get(path)
        .body(Vec::new())
        .map_err(|e| e.to_string())?;
    tokio::time::timeout(Duration::from_secs(5), client.request_text(req))
        .await
        .map_err(|_| "timeout".to_owned())?
        .map_err(|e| e.to_string())
}

/// One server shared by all tests of a test binary, started on first use. Tests that stop or
/// freeze the server start their own instead.
pub async fn shared() -> &'static KubeServer {
    static SERVER: tokio::sync::OnceCell<KubeServer> = tokio::sync::OnceCell::const_new();
    SERVER.get_or_init(KubeServer::start).await
}

/// A name no other test uses: `prefix-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Serialises tests that must not overlap (e.g. ones that stop the server).
pub fn serial() -> &'static Mutex<()> {
    static LOCK: Mutex<()> = Mutex::new(());
    &LOCK
}

fn clean_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let pid = name.split('-').next().and_then(|p| p.parse::<i32>().ok());
        if let Some(pid) = pid
            && !Path::new(&format!("/proc/{pid}")).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn run(cmd: &mut Command) {
    let out = cmd.output().expect("run openssl");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn make_certs(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "7",
        "-subj",
        "/CN=leasehold-test-ca",
        "-keyout",
        &p("ca.key"),
        "-out",
        &p("ca.crt"),
    ]));
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=kube-apiserver",
        "-keyout",
        &p("server.key"),
        "-out",
        &p("server.csr"),
    ]));
    fs::write(
        dir.join("san.ext"),
        "subjectAltName=DNS:localhost,IP:127.0.0.1\n",
    )
    .expect("san.ext");
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-days",
        "7",
        "-in",
        &p("server.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &p("san.ext"),
        "-out",
        &p("server.crt"),
    ]));
    run(Command::new("openssl").args(["genrsa", "-out", &p("sa.key"), "2048"]));
    run(Command::new("openssl").args([
        "rsa",
        "-in",
        &p("sa.key"),
        "-pubout",
        "-out",
        &p("sa.pub"),
    ]));
}

/// Reads lines from a child's output as they come, stamped with the time they arrived.
pub fn stamp_lines(
    reader: impl std::io::Read + Send + 'static,
) -> mpsc::Receiver<(tokio::time::Instant, String)> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(reader).lines().map_while(Result::ok) {
            if tx.send((tokio::time::Instant::now(), line)).is_err() {
                break;
            }
        }
    });
    rx
}
