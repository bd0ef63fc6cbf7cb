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
    /// Our controller-runtime operator, the example operator's peer in the benchmark
    /// (`crates/leasehold-testing/go/controller-runtime-peer`).
    pub cr_operator: PathBuf,
    /// etcd's own `etcdctl` (its `elect` command).
    pub etcdctl: PathBuf,
    /// Our Go peer on etcd's `client/v3/concurrency` election
    /// (`crates/leasehold-testing/go/etcd-peer`).
    pub etcd_elector: PathBuf,
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
            cr_operator: dir.join("cr-operator"),
            etcdctl: dir.join("etcdctl"),
            etcd_elector: dir.join("etcd-elector"),
        };
        for b in [
            &bins.etcd,
            &bins.kube_apiserver,
            &bins.leader_election,
            &bins.go_elector,
            &bins.cr_operator,
            &bins.etcdctl,
            &bins.etcd_elector,
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

/// What a [`KubeServer`] serves besides its defaults.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct ServerOptions {
    /// Host names the API server also answers to, each with a certificate of its own whose only
    /// name it is, chosen by the client's TLS server name (SNI, `--tls-sni-cert-key`) and signed
    /// by a second CA ([`KubeServer::sni_ca`]), which the default certificate is not.
    pub sni_names: Vec<String>,
}

// === impl ServerOptions ===

impl ServerOptions {
    /// With [`sni_names`](Self::sni_names).
    #[must_use]
    pub fn sni_names(self, names: &[&str]) -> Self {
        Self {
            sni_names: names.iter().map(|n| (*n).to_owned()).collect(),
        }
    }
}

/// A real etcd + kube-apiserver on 127.0.0.1.
#[derive(Debug)]
pub struct KubeServer {
    dir: PathBuf,
    port: u16,
    etcd_port: u16,
    etcd_peer: Option<u16>,
    etcd: Option<Proc>,
    apiserver: Option<Proc>,
    sni_names: Vec<String>,
}

// === impl KubeServer ===

impl KubeServer {
    /// Starts etcd and kube-apiserver and waits until `/readyz` answers ok.
    ///
    /// # Panics
    /// If either does not come up within 90 s (the log paths are in the message).
    pub async fn start() -> Self {
        Self::start_with(ServerOptions::default()).await
    }

    /// Like [`start`](Self::start), with `options`.
    ///
    /// # Panics
    /// As [`start`](Self::start).
    pub async fn start_with(options: ServerOptions) -> Self {
        let bins = bins();
        let base = std::env::temp_dir().join("leasehold-harness");
        clean_stale(&base);
        let dir = base.join(format!("{}-{}", std::process::id(), free_port()));
        fs::create_dir_all(&dir).expect("harness dir");
        make_certs(&dir);
        if !options.sni_names.is_empty() {
            make_sni_certs(&dir, &options.sni_names);
        }
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
            sni_names: options.sni_names,
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
        self.apiserver_args_on(self.port)
    }

    fn apiserver_args_on(&self, port: u16) -> Vec<String> {
        let d = |f: &str| self.dir.join(f).display().to_string();
        let mut args = vec![
            "--advertise-address=127.0.0.1".into(),
            "--bind-address=127.0.0.1".into(),
            format!("--secure-port={port}"),
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
        ];
        for name in &self.sni_names {
            args.push(format!(
                "--tls-sni-cert-key={},{}:{name}",
                d(&format!("sni-{name}.crt")),
                d(&format!("sni-{name}.key"))
            ));
        }
        args
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
        self.wait_ready_as("admin", limit).await;
    }

    /// Waits until `/readyz` answers ok to the kubeconfig of `user`.
    async fn wait_ready_as(&self, user: &str, limit: Duration) {
        let client = self.client(user).await;
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

    /// Starts another kube-apiserver on the same etcd, certificates and tokens, on a port of its
    /// own, with `extra` flags (for example `--disable-http2-serving`), and waits until it is
    /// ready. It is killed when the returned guard is dropped.
    ///
    /// # Panics
    /// If it does not come up within 90 s.
    pub async fn start_another_apiserver(&self, extra: &[&str]) -> ApiServer {
        let bins = bins();
        let port = free_port();
        let mut args = self.apiserver_args_on(port);
        args.extend(extra.iter().map(|a| (*a).to_owned()));
        let proc = Proc::spawn(
            "kube-apiserver",
            &bins.kube_apiserver,
            &args,
            &self.dir.join(format!("kube-apiserver-{port}.log")),
        );
        let user = format!("admin-{port}");
        self.write_kubeconfig_for(&user, ADMIN_TOKEN, port);
        self.wait_ready_as(&user, Duration::from_secs(90)).await;
        ApiServer { proc, port }
    }

    /// The CA that signed the certificates of [`ServerOptions::sni_names`] (and no other).
    pub fn sni_ca(&self) -> PathBuf {
        self.dir.join("sni-ca.crt")
    }

    /// The CA that signed the server's default certificate (names `localhost`, `127.0.0.1`).
    pub fn ca(&self) -> PathBuf {
        self.dir.join("ca.crt")
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

    /// The client URL of the etcd under the API server, for the etcd backend's tests (their
    /// keys live outside the API server's `/registry`).
    pub fn etcd_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.etcd_port)
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

/// A kube-apiserver started by [`KubeServer::start_another_apiserver`]; killed on drop.
#[derive(Debug)]
pub struct ApiServer {
    proc: Proc,
    port: u16,
}

// === impl ApiServer ===

impl ApiServer {
    /// Its HTTPS port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }
}

impl Drop for ApiServer {
    fn drop(&mut self) {
        self.proc.kill();
    }
}

/// A real HTTP CONNECT proxy on 127.0.0.1: Debian's `tinyproxy`, killed on drop.
///
/// It runs in a mount namespace of its own, with an `/etc/hosts` of its own that maps the
/// `names` it was started with to 127.0.0.1: a URL with one of those host names resolves
/// nowhere else on the machine, so a client reaches it through this proxy or not at all.
/// Every tunnel it opens is logged (`LogLevel Connect`) and counted by
/// [`connects`](Self::connects).
#[derive(Debug)]
pub struct Tinyproxy {
    proc: Option<Proc>,
    port: u16,
    log: PathBuf,
}

// === impl Tinyproxy ===

impl Tinyproxy {
    /// Starts it in `dir` on a free port, resolving `names` to 127.0.0.1, allowing CONNECT to
    /// `ports` only, and asking for `basic_auth` (user, password) if given; waits until it
    /// accepts connections.
    ///
    /// # Panics
    /// If `tinyproxy` or `unshare` is missing (`scripts/test-all` installs them) or it does not
    /// listen within 10 s.
    pub async fn start(
        dir: &Path,
        names: &[&str],
        ports: &[u16],
        basic_auth: Option<(&str, &str)>,
    ) -> Self {
        let port = free_port();
        let log = dir.join(format!("tinyproxy-{port}.log"));
        let hosts = dir.join(format!("tinyproxy-{port}.hosts"));
        let mut table = String::from("127.0.0.1 localhost\n::1 localhost\n");
        for name in names {
            table.push_str(&format!("127.0.0.1 {name}\n"));
        }
        fs::write(&hosts, table).expect("tinyproxy hosts");
        let mut conf = format!(
            "Port {port}\nListen 127.0.0.1\nTimeout 60\nAllow 127.0.0.1\nMaxClients 100\n\
             LogLevel Connect\nLogFile \"{}\"\n",
            log.display()
        );
        for p in ports {
            conf.push_str(&format!("ConnectPort {p}\n"));
        }
        if let Some((user, password)) = basic_auth {
            conf.push_str(&format!("BasicAuth {user} {password}\n"));
        }
        let conf_path = dir.join(format!("tinyproxy-{port}.conf"));
        fs::write(&conf_path, conf).expect("tinyproxy.conf");
        let program = ["/usr/bin/tinyproxy", "/usr/sbin/tinyproxy"]
            .into_iter()
            .find(|p| Path::new(p).exists())
            .expect(
                "tinyproxy is not installed (apt-get install tinyproxy; scripts/test-all does)",
            );
        // A private mount namespace (root's own, or a user namespace's without root), in which
        // this process's /etc/hosts is the table above.
        let mut args: Vec<String> = Vec::new();
        if !rustix::process::geteuid().is_root() {
            args.extend(["--user".into(), "--map-root-user".into()]);
        }
        args.extend([
            "--mount".into(),
            "--".into(),
            "sh".into(),
            "-c".into(),
            format!(
                "mount --bind '{}' /etc/hosts && exec {program} -d -c '{}'",
                hosts.display(),
                conf_path.display()
            ),
        ]);
        let proc = Proc::spawn(
            "tinyproxy",
            Path::new("unshare"),
            &args,
            &dir.join(format!("tinyproxy-{port}.out")),
        );
        let start = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_err()
        {
            if let Some(code) = proc.try_exited() {
                panic!(
                    "tinyproxy exited ({code:?}): {}",
                    fs::read_to_string(dir.join(format!("tinyproxy-{port}.out")))
                        .unwrap_or_default()
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "tinyproxy does not listen on {port}"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Self {
            proc: Some(proc),
            port,
            log,
        }
    }

    /// Its port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `http://127.0.0.1:PORT`.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Its log.
    pub fn log(&self) -> String {
        fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The tunnels it was asked for to `target` (`host:port`): its log's `CONNECT` request
    /// lines naming it.
    pub fn connects(&self, target: &str) -> Vec<String> {
        let needle = format!("CONNECT {target} ");
        self.log()
            .lines()
            .filter(|l| l.contains(&needle))
            .map(str::to_owned)
            .collect()
    }

    /// Kills it.
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }
}

impl Drop for Tinyproxy {
    fn drop(&mut self) {
        self.stop();
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

/// Sends `method url` with `body` of `content_type` (JSON or YAML, as the API server accepts
/// both) through `client`, and returns the answer's text.
///
/// # Panics
/// If the request fails: test support.
pub async fn request_text(
    client: &kube::Client,
    method: &str,
    url: &str,
    content_type: &str,
    body: Vec<u8>,
) -> String {
    let req = http::Request::builder()
        .method(method)
        .uri(url)
        .header("content-type", content_type)
        .body(body)
        .expect("request");
    client
        .request_text(req)
        .await
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"))
}

/// Creates the namespace `name`.
///
/// # Panics
/// If it cannot be created: test support.
pub async fn create_namespace(client: &kube::Client, name: &str) {
    let ns = k8s_openapi::api::core::v1::Namespace {
        metadata: kube::api::ObjectMeta {
            name: Some(name.to_owned()),
            ..Default::default()
        },
        ..Default::default()
    };
    kube::Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&kube::api::PostParams::default(), &ns)
        .await
        .unwrap_or_else(|e| panic!("create namespace {name}: {e}"));
}

/// Creates the ServiceAccount `default` in `namespace` if it is missing: the harness runs no
/// controller-manager, which would make it, and Pods cannot be created without it.
pub async fn ensure_default_service_account(client: &kube::Client, namespace: &str) {
    let sa = k8s_openapi::api::core::v1::ServiceAccount {
        metadata: kube::api::ObjectMeta {
            name: Some("default".into()),
            ..Default::default()
        },
        ..Default::default()
    };
    let _ = kube::Api::<k8s_openapi::api::core::v1::ServiceAccount>::namespaced(
        client.clone(),
        namespace,
    )
    .create(&kube::api::PostParams::default(), &sa)
    .await;
}

/// Which of `pods` (oldest first, in `namespace`) the ReplicaSet controller removes next when
/// it scales down Pods that are alike otherwise: the lowest
/// `controller.kubernetes.io/pod-deletion-cost` first, then the newest. Returns its index.
///
/// # Panics
/// If `pods` is empty or a Pod cannot be read: test support.
pub async fn next_pod_to_delete(client: &kube::Client, namespace: &str, pods: &[&str]) -> usize {
    let api: kube::Api<k8s_openapi::api::core::v1::Pod> =
        kube::Api::namespaced(client.clone(), namespace);
    let mut ranked = Vec::new();
    for (idx, name) in pods.iter().enumerate() {
        let p = api
            .get(name)
            .await
            .unwrap_or_else(|e| panic!("get pod {name}: {e}"));
        let cost: i64 = p
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get("controller.kubernetes.io/pod-deletion-cost"))
            .and_then(|c| c.parse().ok())
            .unwrap_or(0);
        ranked.push((cost, std::cmp::Reverse(idx)));
    }
    let (_, std::cmp::Reverse(idx)) = *ranked.iter().min().expect("pods left");
    idx
}

/// etcd's own metrics, `/metrics` on a plain client URL (`http://HOST:PORT`), as text; `None`
/// if it does not answer within 5 seconds.
pub fn etcd_metrics(url: &str) -> Option<String> {
    use std::io::{Read as _, Write as _};
    let addr = url.trim_start_matches("http://");
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .ok()?;
    let mut body = String::new();
    s.read_to_string(&mut body).ok()?;
    Some(body)
}

/// The sum of a metric's samples whose line starts with `prefix` (a name, or a name and
/// the start of its labels), in etcd's `/metrics` text.
pub fn metric_sum(text: &str, prefix: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(prefix))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// A name no other test uses: `prefix-<pid>-<n>`.
pub fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// A single etcd member on 127.0.0.1, of its own: for tests of the etcd backend that stop and
/// restart it, which the shared API server's etcd must never be.
pub struct EtcdServer {
    dir: PathBuf,
    port: u16,
    peer: u16,
    proc: Option<Proc>,
    tls: bool,
}

// === impl EtcdServer ===

impl EtcdServer {
    /// Starts it and waits until its client port accepts connections.
    pub async fn start() -> Self {
        Self::start_with_tls(false).await
    }

    /// Starts one that serves clients over TLS only and requires a client certificate signed by
    /// its CA ([`tls_files`](Self::tls_files)).
    pub async fn start_tls() -> Self {
        Self::start_with_tls(true).await
    }

    async fn start_with_tls(tls: bool) -> Self {
        let dir = std::env::temp_dir().join(unique("leasehold-etcd"));
        fs::create_dir_all(&dir).expect("etcd test directory");
        if tls {
            make_certs(&dir);
            make_client_cert(&dir);
            make_sni_certs(&dir, &[]);
        }
        let mut s = Self {
            dir,
            port: free_port(),
            peer: free_port(),
            proc: None,
            tls,
        };
        s.restart().await;
        s
    }

    /// Its process id while it runs.
    pub fn pid(&self) -> Option<i32> {
        self.proc.as_ref().map(Proc::pid)
    }

    /// Its client URL (`https://` with TLS).
    pub fn url(&self) -> String {
        let scheme = if self.tls { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// With TLS: the CA that signs the server and client certificates, the client certificate
    /// and its key, and another CA that signs neither.
    pub fn tls_files(&self) -> [PathBuf; 4] {
        ["ca.crt", "client.crt", "client.key", "sni-ca.crt"].map(|f| self.dir.join(f))
    }

    /// Its directory (data and log).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills it (SIGKILL): clients see the connection fail.
    pub fn stop(&mut self) {
        if let Some(p) = self.proc.take() {
            p.kill();
        }
    }

    /// Starts it (again) on the same ports and data, and waits for its client port.
    pub async fn restart(&mut self) {
        self.stop();
        let mut args: Vec<String> = vec![
            "--name=default".into(),
            format!("--data-dir={}", self.dir.join("data").display()),
            format!("--listen-client-urls={}", self.url()),
            format!("--advertise-client-urls={}", self.url()),
            format!("--listen-peer-urls=http://127.0.0.1:{}", self.peer),
            format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                self.peer
            ),
            format!("--initial-cluster=default=http://127.0.0.1:{}", self.peer),
            "--log-level=warn".into(),
        ];
        if self.tls {
            let p = |f: &str| self.dir.join(f).display().to_string();
            args.extend([
                format!("--cert-file={}", p("server.crt")),
                format!("--key-file={}", p("server.key")),
                format!("--trusted-ca-file={}", p("ca.crt")),
                "--client-cert-auth".into(),
            ]);
        }
        self.proc = Some(Proc::spawn(
            "etcd",
            &bins().etcd,
            &args,
            &self.dir.join("etcd.log"),
        ));
        let start = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd did not listen on {} (log: {})",
                self.url(),
                self.dir.join("etcd.log").display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.stop();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

/// A 3-member etcd cluster on 127.0.0.1 (three processes, their own client and peer ports),
/// tuned for tests: 10 ms heartbeats, 100 ms elections, no fsync. For the etcd backend's
/// fault runs: members are killed and restarted, the raft leader among them.
pub struct EtcdCluster {
    dir: PathBuf,
    clients: [u16; 3],
    peers: [u16; 3],
    procs: [Option<Proc>; 3],
}

// === impl EtcdCluster ===

impl EtcdCluster {
    /// Starts the three members and waits until each client port accepts connections.
    pub async fn start() -> Self {
        let dir = std::env::temp_dir().join(unique("leasehold-etcd-cluster"));
        fs::create_dir_all(&dir).expect("etcd cluster directory");
        let mut c = Self {
            dir,
            clients: [free_port(), free_port(), free_port()],
            peers: [free_port(), free_port(), free_port()],
            procs: [None, None, None],
        };
        for i in 0..3 {
            c.spawn(i, "new");
        }
        for i in 0..3 {
            c.wait_listening(i).await;
        }
        c
    }

    /// The members' client URLs.
    pub fn urls(&self) -> Vec<String> {
        (0..3).map(|i| self.url(i)).collect()
    }

    /// Member `i`'s client URL.
    pub fn url(&self, i: usize) -> String {
        format!("http://127.0.0.1:{}", self.clients[i])
    }

    /// The directory (data and logs).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Kills member `i` (SIGKILL).
    pub fn stop_member(&mut self, i: usize) {
        if let Some(p) = self.procs[i].take() {
            p.kill();
        }
    }

    /// Starts member `i` again on its data, and waits for its client port.
    pub async fn restart_member(&mut self, i: usize) {
        self.stop_member(i);
        self.spawn(i, "existing");
        self.wait_listening(i).await;
    }

    /// Sends `sig` to member `i` (`STOP` and `CONT`: a member that hangs without closing its
    /// connections).
    pub fn signal_member(&self, i: usize, sig: rustix::process::Signal) {
        if let Some(p) = &self.procs[i] {
            p.signal(sig);
        }
    }

    /// Kills all three members, then starts them again on their data: the whole cluster down
    /// and back, as after a power cut.
    pub async fn restart_all(&mut self) {
        for i in 0..3 {
            self.stop_member(i);
        }
        for i in 0..3 {
            self.spawn(i, "existing");
        }
        for i in 0..3 {
            self.wait_listening(i).await;
        }
    }

    /// The index of the member that is the raft leader, as the members that answer report it.
    pub async fn raft_leader(&self) -> Option<usize> {
        let endpoints = (0..3)
            .filter(|i| self.procs[*i].is_some())
            .map(|i| self.url(i))
            .collect::<Vec<_>>()
            .join(",");
        let out = tokio::process::Command::new(bins().etcdctl)
            .args([
                "--endpoints",
                &endpoints,
                "endpoint",
                "status",
                "-w",
                "json",
            ])
            .output()
            .await
            .ok()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
        let statuses = v.as_array()?;
        let leader = statuses
            .iter()
            .find_map(|s| s["Status"]["leader"].as_u64())?;
        let url = statuses.iter().find_map(|s| {
            (s["Status"]["header"]["member_id"].as_u64() == Some(leader))
                .then(|| s["Endpoint"].as_str().map(str::to_owned))
                .flatten()
        })?;
        (0..3).find(|i| self.url(*i) == url)
    }

    fn spawn(&mut self, i: usize, state: &str) {
        let cluster = (0..3)
            .map(|j| format!("m{j}=http://127.0.0.1:{}", self.peers[j]))
            .collect::<Vec<_>>()
            .join(",");
        let args: Vec<String> = vec![
            format!("--name=m{i}"),
            format!("--data-dir={}", self.dir.join(format!("m{i}")).display()),
            format!("--listen-client-urls={}", self.url(i)),
            format!("--advertise-client-urls={}", self.url(i)),
            format!("--listen-peer-urls=http://127.0.0.1:{}", self.peers[i]),
            format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{}",
                self.peers[i]
            ),
            format!("--initial-cluster={cluster}"),
            format!("--initial-cluster-state={state}"),
            "--initial-cluster-token=leasehold-test".into(),
            "--heartbeat-interval=10".into(),
            "--election-timeout=100".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ];
        self.procs[i] = Some(Proc::spawn(
            &format!("etcd-m{i}"),
            &bins().etcd,
            &args,
            &self.dir.join(format!("m{i}.log")),
        ));
    }

    async fn wait_listening(&self, i: usize) {
        let start = tokio::time::Instant::now();
        while tokio::net::TcpStream::connect(("127.0.0.1", self.clients[i]))
            .await
            .is_err()
        {
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "etcd member m{i} did not listen (log: {})",
                self.dir.join(format!("m{i}.log")).display()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..3 {
            self.stop_member(i);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
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

/// A client certificate (`client.crt`, `client.key`) signed by `make_certs`'s CA.
fn make_client_cert(dir: &Path) {
    let p = |f: &str| dir.join(f).display().to_string();
    run(Command::new("openssl").args([
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=leasehold-client",
        "-keyout",
        &p("client.key"),
        "-out",
        &p("client.csr"),
    ]));
    fs::write(dir.join("client.ext"), "extendedKeyUsage=clientAuth\n").expect("client.ext");
    run(Command::new("openssl").args([
        "x509",
        "-req",
        "-days",
        "7",
        "-in",
        &p("client.csr"),
        "-CA",
        &p("ca.crt"),
        "-CAkey",
        &p("ca.key"),
        "-CAcreateserial",
        "-extfile",
        &p("client.ext"),
        "-out",
        &p("client.crt"),
    ]));
}

/// A second CA, and for each of `names` a certificate signed by it whose only name it is.
fn make_sni_certs(dir: &Path, names: &[String]) {
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
        "/CN=leasehold-test-sni-ca",
        "-keyout",
        &p("sni-ca.key"),
        "-out",
        &p("sni-ca.crt"),
    ]));
    for name in names {
        let (key, csr, crt, ext) = (
            p(&format!("sni-{name}.key")),
            p(&format!("sni-{name}.csr")),
            p(&format!("sni-{name}.crt")),
            p(&format!("sni-{name}.ext")),
        );
        run(Command::new("openssl").args([
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-subj",
            &format!("/CN={name}"),
            "-keyout",
            &key,
            "-out",
            &csr,
        ]));
        fs::write(&ext, format!("subjectAltName=DNS:{name}\n")).expect("sni ext");
        run(Command::new("openssl").args([
            "x509",
            "-req",
            "-days",
            "7",
            "-in",
            &csr,
            "-CA",
            &p("sni-ca.crt"),
            "-CAkey",
            &p("sni-ca.key"),
            "-CAcreateserial",
            "-extfile",
            &ext,
            "-out",
            &crt,
        ]));
    }
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
