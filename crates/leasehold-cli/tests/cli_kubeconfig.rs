//! The kubeconfig fields the `leasehold` CLI's own Kubernetes client must honour
//! (`backend::kubernetes::client_with_http2`: leasehold's HTTP/2 path and its HTTP/1.1
//! client), as processes against a real kube-apiserver + etcd, a second kube-apiserver that
//! speaks HTTP/1.1 only, and a real HTTP CONNECT proxy (tinyproxy), all started by the harness
//! (`leasehold_testing::client_config`).
//!
//! Each case runs `leasehold run` (which reads, creates and releases a Lease, and runs a
//! command while leading) and `leasehold status` (which reads it back).

use leasehold_testing::{
    client_config::{self, PROXIED_NAME, PROXY_USER, Plugin, SNI_NAME, Setup},
    harness::unique,
};
use std::{
    path::Path,
    process::{Command, Output, Stdio},
    time::Duration,
};

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// Runs `cmd` to its end, or kills it after a minute (a client that retries forever fails the
/// test instead of hanging it).
fn output(cmd: &mut Command) -> Output {
    let child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let (tx, rx) = std::sync::mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        // Only on the timeout: a disconnect means it was waited for, and its pid is free.
        if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
            rx.recv_timeout(Duration::from_secs(60))
            && let Some(pid) = rustix::process::Pid::from_raw(pid as i32)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    });
    let out = child.wait_with_output().unwrap();
    drop(tx);
    let _ = watchdog.join();
    assert!(
        out.status.code().is_some(),
        "{cmd:?} killed after a minute: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// `leasehold run` of a command that exits at once: it must lead, run it, release and exit 0.
fn run_once(kubeconfig: &Path, name: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "run",
        "--backend",
        "kube",
        "--namespace",
        "default",
        "--name",
        name,
        "--id",
        "kubeconfig-test",
        "--kubeconfig",
    ])
    .arg(kubeconfig)
    .args(["--", "sh", "-c", "echo child ran"]);
    output(&mut cmd)
}

fn status(kubeconfig: &Path, name: &str) -> Output {
    let mut cmd = Command::new(BIN);
    cmd.args([
        "status",
        "--backend",
        "kube",
        "--namespace",
        "default",
        "--name",
        name,
        "--json",
        "--kubeconfig",
    ])
    .arg(kubeconfig);
    output(&mut cmd)
}

/// `run` leads and runs its command, then `status` reads the released Lease back. Returns
/// `run`'s log.
fn round_trip(kubeconfig: &Path, what: &str) -> String {
    let name = unique("kubeconfig");
    let out = run_once(kubeconfig, &name);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && stdout.contains("child ran"),
        "{what}: run failed ({:?}): {stdout}{}",
        out.status,
        stderr(&out)
    );
    assert!(
        stdout.contains("leading: kubeconfig-test"),
        "{what}: {stdout}"
    );
    let log = stderr(&out);
    let out = status(kubeconfig, &name);
    assert!(
        out.status.success(),
        "{what}: status failed: {}",
        stderr(&out)
    );
    let st: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(st["exists"], true, "{what}: {st}");
    assert_eq!(st["lock"], format!("lease default/{name}"), "{what}: {st}");
    assert_eq!(st["transitions"], 0, "{what}: {st}");
    log
}

/// `status` must fail with exit 1 or 64 (not a panic's 101), naming `needles` on stderr.
fn fails_naming(kubeconfig: &Path, what: &str, needles: &[&str]) -> String {
    let out = status(kubeconfig, &unique("kubeconfig-bad"));
    let err = stderr(&out);
    assert!(
        matches!(out.status.code(), Some(1 | 64)),
        "{what}: exit {:?}: {err}",
        out.status
    );
    assert!(!err.contains("panicked"), "{what}: {err}");
    for needle in needles {
        assert!(err.contains(needle), "{what}: no `{needle}` in: {err}");
    }
    eprintln!("{what}: exit {:?}: {}", out.status.code(), err.trim());
    err
}

/// The proxied kubeconfig for the HTTP/2 server.
fn proxied(setup: &Setup, port: u16, proxy_url: Option<String>, name: &str) -> std::path::PathBuf {
    setup.write(name, &setup.proxied(port, proxy_url).yaml())
}

/// The cluster's URL names a host that resolves only inside the proxy's own mount namespace
/// (its own `/etc/hosts`): the requests can have reached the API server only through the
/// proxy, and its log shows the tunnels (the proxy is this test's own, so it counts only this
/// test's). Without `proxy-url`, or with the proxy stopped, the same kubeconfig fails: the
/// proxy is not a detour that could be skipped silently. Covered: the HTTP/2 server and the
/// HTTP/1.1-only one, a proxy asking for credentials given in the URL, and `tls-server-name`
/// through the tunnel.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_goes_through_proxy_url_the_only_way_to_the_api_server() {
    let setup = client_config::shared().await;
    let mut proxy = setup.start_proxy(None).await;
    let auth_proxy = setup.start_proxy(Some(PROXY_USER)).await;
    for (port, label) in [
        (setup.server.port(), "HTTP/2 server"),
        (setup.http1.port(), "HTTP/1.1-only server"),
    ] {
        let target = format!("{PROXIED_NAME}:{port}");
        let kc = proxied(setup, port, Some(proxy.url()), &format!("proxied-{port}"));
        round_trip(&kc, &format!("proxy-url, {label}"));
        let tunnels = proxy.connects(&target);
        // `run` and `status`: one process each, each through the proxy.
        assert!(
            tunnels.len() >= 2,
            "{label}: {} tunnels through the proxy: {}",
            tunnels.len(),
            proxy.log()
        );
        eprintln!(
            "proxy-url, {label}: `run` and `status` opened {} tunnels through tinyproxy, e.g. {}",
            tunnels.len(),
            tunnels[0].split("]: ").last().unwrap_or_default()
        );

        // Credentials in the URL, as kubectl takes them (Basic, Proxy-Authorization).
        let (user, password) = PROXY_USER;
        let url = Setup::proxy_url_with(&auth_proxy, user, password);
        let kc = proxied(setup, port, Some(url), &format!("proxied-auth-{port}"));
        round_trip(&kc, &format!("proxy-url with credentials, {label}"));
        assert!(auth_proxy.connects(&target).len() >= 2);

        // tls-server-name applies inside the tunnel too: the API server presents the
        // certificate of the name asked for.
        let kc = setup.proxied(port, Some(proxy.url()));
        let kc = setup.write(
            &format!("proxied-sni-{port}"),
            &kc.tls_server_name(SNI_NAME).yaml(),
        );
        round_trip(&kc, &format!("proxy-url and tls-server-name, {label}"));
    }

    // Without proxy-url the name does not resolve: nothing but the proxy reaches the server.
    let kc = proxied(setup, setup.server.port(), None, "unproxied");
    fails_naming(&kc, "no proxy-url", &[PROXIED_NAME]);
    // The proxy stopped: an error naming it, not a direct connection.
    let kc = proxied(
        setup,
        setup.server.port(),
        Some(proxy.url()),
        "proxy-stopped",
    );
    proxy.stop();
    fails_naming(&kc, "proxy stopped", &["proxy-url", &proxy.url()]);
}

/// The server's certificate for the name asked for names only that, and is signed by a CA
/// the default certificate is not: with `tls-server-name` it verifies, on leasehold's HTTP/2
/// path and on the HTTP/1.1 client it falls back to when the server refuses HTTP/2; without
/// it, the same kubeconfig fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_uses_tls_server_name_on_http2_and_on_the_http1_fallback() {
    let setup = client_config::shared().await;
    for (port, label, fallback) in [
        (setup.server.port(), "HTTP/2 server", false),
        (setup.http1.port(), "HTTP/1.1-only server (fallback)", true),
    ] {
        let kc = setup.write(
            &format!("sni-{port}"),
            &setup.sni(port, Some(SNI_NAME)).yaml(),
        );
        let log = round_trip(&kc, &format!("tls-server-name, {label}"));
        // The HTTP/2 path says when it hands the requests to the HTTP/1.1 client.
        assert_eq!(
            log.contains("does not offer HTTP/2"),
            fallback,
            "{label}: {log}"
        );
        eprintln!(
            "tls-server-name `{SNI_NAME}`, {label}: run and status ok{}",
            if fallback {
                " (log: the API server does not offer HTTP/2; using kube's client)"
            } else {
                ""
            }
        );

        let kc = setup.write(&format!("no-sni-{port}"), &setup.sni(port, None).yaml());
        fails_naming(
            &kc,
            &format!("without tls-server-name, {label}"),
            &["certificate"],
        );
    }
}

/// The plugin appends a line to its counter per run. One process builds one client: the
/// plugin must run once (kube-rs's builder alone runs it three times: for the token, for a
/// client certificate, and for the client's expiry).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_runs_an_exec_plugin_once_per_process() {
    let setup = client_config::shared().await;
    for (plugin, label) in [
        (Plugin::Token, "token without expiry"),
        (Plugin::Expiring(3600), "token valid for an hour"),
    ] {
        let (user, counter) = setup.exec_plugin(&unique("cli"), plugin);
        let kc = setup.direct(setup.server.port()).user(user);
        let kc = setup.write(&unique("exec"), &kc.yaml());
        let name = unique("exec");
        let out = status(&kc, &name);
        assert!(out.status.success(), "{label}: {}", stderr(&out));
        let after_status = counter.runs();
        let out = run_once(&kc, &name);
        assert!(out.status.success(), "{label}: {}", stderr(&out));
        let after_run = counter.runs() - after_status;
        eprintln!(
            "exec plugin ({label}): {after_status} run(s) for `leasehold status`, {after_run} for `leasehold run`"
        );
        assert_eq!(
            (after_status, after_run),
            (1, 1),
            "{label}: runs per process"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_accepts_a_kubeconfig_with_anchors_aliases_and_merge_keys() {
    let setup = client_config::shared().await;
    let kc = setup.write("anchored", &setup.anchored());
    round_trip(&kc, "anchors, aliases and merge keys");
}

/// Each field wrong in its own way: the error names the field (or the plugin), exits 1 or 64,
/// never panics and never falls back to something else.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_names_a_bad_proxy_url_tls_server_name_or_exec_plugin() {
    let setup = client_config::shared().await;
    let port = setup.server.port();
    let closed = leasehold_testing::harness::free_port();
    let closed_proxy = format!("127.0.0.1:{closed}");
    let proxy = |url: &str| setup.proxied(port, Some(url.to_owned()));
    let (user, _) = PROXY_USER;
    let cases = [
        (
            "proxy-url socks5",
            proxy("socks5://127.0.0.1:1080"),
            vec!["proxy-url", "socks5://127.0.0.1:1080"],
        ),
        (
            "proxy-url not a URL",
            proxy("http://exa mple:80"),
            vec!["proxy-url"],
        ),
        (
            "proxy-url unreachable",
            proxy(&format!("http://127.0.0.1:{closed}")),
            vec!["proxy-url", &closed_proxy],
        ),
        (
            "proxy-url with the wrong password",
            proxy(&Setup::proxy_url_with(&setup.auth_proxy, user, "wrong")),
            vec!["proxy-url"],
        ),
        (
            "proxy-url without the credentials the proxy asks for",
            proxy(&setup.auth_proxy.url()),
            vec!["proxy-url"],
        ),
        (
            "tls-server-name not on the certificate",
            setup.sni(port, Some("other-name.leasehold.test")),
            vec!["tls-server-name", "other-name.leasehold.test"],
        ),
        (
            "tls-server-name not on the certificate, HTTP/1.1-only server",
            setup.sni(setup.http1.port(), Some("other-name.leasehold.test")),
            vec!["tls-server-name", "other-name.leasehold.test"],
        ),
        (
            "tls-server-name not a host name",
            setup.sni(port, Some("not a host name")),
            vec!["tls-server-name `not a host name` is neither a host name nor an IP address"],
        ),
        (
            "tls-server-name not on the certificate, through the proxy (HTTP/1.1 client)",
            proxy(&setup.proxy.url()).tls_server_name("other-name.leasehold.test"),
            vec![
                "tls-server-name",
                "other-name.leasehold.test",
                "invalid peer certificate",
            ],
        ),
    ];
    for (what, kc, needles) in cases {
        let path = setup.write(&unique("bad"), &kc.yaml());
        fails_naming(&path, what, &needles);
    }
    for (plugin, what, needle) in [
        (
            Plugin::Fails,
            "exec plugin exits 3",
            "cannot reach its identity provider",
        ),
        (Plugin::Garbage, "exec plugin prints garbage", "exec"),
    ] {
        let (user, counter) = setup.exec_plugin(&unique("bad"), plugin);
        let kc = setup.direct(port).user(user);
        let path = setup.write(&unique("bad-exec"), &kc.yaml());
        fails_naming(&path, what, &["exec-plugin.sh", needle]);
        assert_eq!(counter.runs(), 1, "{what}: runs");
    }
}
