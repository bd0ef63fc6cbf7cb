//! The kubeconfig fields a client built by leasehold must honour, against a real
//! kube-apiserver + etcd, a second kube-apiserver that speaks HTTP/1.1 only, and a real HTTP
//! CONNECT proxy (tinyproxy), all started by the harness (`leasehold_testing::client_config`).
//!
//! Every case builds the client from a kubeconfig file with
//! [`client`](leasehold::backend::kubernetes::client) (kube-rs's own builder) and, when the
//! crate is built with `lean-client`, with
//! [`client_with_http2`](leasehold::backend::kubernetes::client_with_http2) too (the CLI's
//! client; `tests/cli_kubeconfig.rs` of the CLI runs the same cases as processes), and makes a
//! Lease round trip with a [`LeaseLock`]: read (absent), create, read back.

use leasehold::{
    LeaderRecord, LockBackend,
    backend::kubernetes::{self as k8s, ApiClient, LeaseLock},
    display_chain,
};
use leasehold_testing::{
    client_config::{self, PROXIED_NAME, PROXY_USER, Plugin, SNI_NAME, Setup},
    harness::unique,
};
use std::{
    future::Future,
    path::{Path, PathBuf},
    pin::Pin,
    time::Duration,
};

type Build = fn(&Path) -> Pin<Box<dyn Future<Output = Result<ApiClient, k8s::ClientError>> + '_>>;

/// The client builders under test, by name.
fn builders() -> Vec<(&'static str, Build)> {
    #[allow(unused_mut)] // Without `lean-client` there is one.
    let mut all: Vec<(&'static str, Build)> = vec![("client", |p| Box::pin(k8s::client(Some(p))))];
    #[cfg(feature = "lean-client")]
    all.push(("client_with_http2", |p| {
        Box::pin(k8s::client_with_http2(Some(p)))
    }));
    all
}

/// Reads a Lease that does not exist, creates it, and reads it back, through `client`.
async fn lease_round_trip(client: ApiClient, what: &str) {
    let name = unique("client-config");
    let lock = LeaseLock::new(client, "default", &name);
    let within = |f| tokio::time::timeout(Duration::from_secs(30), f);
    let absent = within(lock.get()).await.expect("get in time");
    assert!(
        matches!(absent, Ok(None)),
        "{what}: get of a new lease: {absent:?}"
    );
    let now = jiff::Timestamp::now();
    let record = LeaderRecord::new("kubeconfig-test", 15)
        .with_acquire_time(Some(now))
        .with_renew_time(Some(now));
    let version = tokio::time::timeout(Duration::from_secs(30), lock.create(&record))
        .await
        .expect("create in time")
        .unwrap_or_else(|e| panic!("{what}: create: {}", display_chain(&e)));
    let got = within(lock.get())
        .await
        .expect("get in time")
        .unwrap_or_else(|e| panic!("{what}: get: {}", display_chain(&e)))
        .unwrap_or_else(|| panic!("{what}: the lease it created is missing"));
    assert_eq!(got.version, version, "{what}");
    assert_eq!(got.record.holder_identity, "kubeconfig-test", "{what}");
    assert_eq!(got.record.lease_duration_seconds, 15, "{what}");
}

/// Builds a client from `kubeconfig` with each builder and makes a Lease round trip with it.
async fn round_trip(kubeconfig: &Path, what: &str) {
    for (builder, build) in builders() {
        let what = format!("{what} ({builder})");
        let client = build(kubeconfig)
            .await
            .unwrap_or_else(|e| panic!("{what}: {}", display_chain(&e)));
        lease_round_trip(client, &what).await;
    }
}

/// Builds a client from `kubeconfig` with each builder; the build or a first read of a Lease
/// must fail (never panic), and the error name each of `needles`.
async fn fails_naming(kubeconfig: &Path, what: &str, needles: &[&str]) {
    for (builder, build) in builders() {
        let error = match build(kubeconfig).await {
            Err(e) => format!("building: {}", display_chain(&e)),
            Ok(client) => {
                let lock = LeaseLock::new(client, "default", &unique("client-config-bad"));
                match tokio::time::timeout(Duration::from_secs(30), lock.get())
                    .await
                    .expect("get in time")
                {
                    Ok(got) => panic!("{what} ({builder}): a read succeeded: {got:?}"),
                    Err(e) => format!("reading: {}", display_chain(&e)),
                }
            }
        };
        for needle in needles {
            assert!(
                error.contains(needle),
                "{what} ({builder}): no `{needle}` in: {error}"
            );
        }
        eprintln!("{what} ({builder}): {error}");
    }
}

fn write(setup: &Setup, kubeconfig: &client_config::Kubeconfig) -> PathBuf {
    setup.write(&unique("lib"), &kubeconfig.yaml())
}

/// The cluster's URL names a host that resolves only inside the proxy's own mount namespace
/// (its own `/etc/hosts`): the round trip can have reached the API server only through the
/// proxy, and its log shows the tunnels (the proxy is this test's own, so it counts only this
/// test's). Without `proxy-url`, or with the proxy stopped, the same kubeconfig fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn proxy_url_is_the_only_way_to_the_api_server_and_is_used() {
    let setup = client_config::shared().await;
    let mut proxy = setup.start_proxy(None).await;
    let auth_proxy = setup.start_proxy(Some(PROXY_USER)).await;
    for (port, label) in [
        (setup.server.port(), "HTTP/2 server"),
        (setup.http1.port(), "HTTP/1.1-only server"),
    ] {
        let target = format!("{PROXIED_NAME}:{port}");
        let kc = write(setup, &setup.proxied(port, Some(proxy.url())));
        round_trip(&kc, &format!("proxy-url, {label}")).await;
        let tunnels = proxy.connects(&target).len();
        // One client per builder, each through the proxy.
        assert!(
            tunnels >= builders().len(),
            "{label}: {tunnels} tunnels: {}",
            proxy.log()
        );
        eprintln!(
            "proxy-url, {label}: {tunnels} CONNECT {target} in tinyproxy's log for {} client(s)",
            builders().len()
        );

        let (user, password) = PROXY_USER;
        let url = Setup::proxy_url_with(&auth_proxy, user, password);
        let kc = write(setup, &setup.proxied(port, Some(url)));
        round_trip(&kc, &format!("proxy-url with credentials, {label}")).await;
        assert!(auth_proxy.connects(&target).len() >= builders().len());

        let kc = setup
            .proxied(port, Some(proxy.url()))
            .tls_server_name(SNI_NAME);
        round_trip(
            &write(setup, &kc),
            &format!("proxy-url and tls-server-name, {label}"),
        )
        .await;
    }
    let kc = write(setup, &setup.proxied(setup.server.port(), None));
    // kube's builder does not name the host it could not resolve.
    fails_naming(
        &kc,
        "no proxy-url",
        &["failed to lookup address information"],
    )
    .await;
    let kc = write(
        setup,
        &setup.proxied(setup.server.port(), Some(proxy.url())),
    );
    proxy.stop();
    fails_naming(&kc, "proxy stopped", &["proxy-url", &proxy.url()]).await;
}

/// The server's certificate for the name asked for names only that, and is signed by a CA the
/// default certificate is not: with `tls-server-name` it verifies, over HTTP/2 and on a server
/// that speaks HTTP/1.1 only; without it the same kubeconfig fails.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_server_name_is_used_over_http2_and_http1() {
    let setup = client_config::shared().await;
    for (port, label) in [
        (setup.server.port(), "HTTP/2 server"),
        (setup.http1.port(), "HTTP/1.1-only server"),
    ] {
        let kc = write(setup, &setup.sni(port, Some(SNI_NAME)));
        round_trip(&kc, &format!("tls-server-name, {label}")).await;
        eprintln!("tls-server-name `{SNI_NAME}`, {label}: Lease round trip ok");
        let kc = write(setup, &setup.sni(port, None));
        fails_naming(
            &kc,
            &format!("without tls-server-name, {label}"),
            &["certificate"],
        )
        .await;
    }
}

/// The plugin appends a line to its counter per run. A client built from it runs it once,
/// then once per refresh: never for a token that does not expire (or not for an hour), and
/// once per request for one that expires within kube-rs's refresh margin (60 s), so that
/// building the client and making `N` requests runs it exactly `1 + N` times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_exec_plugin_runs_once_per_refresh() {
    let setup = client_config::shared().await;
    for (builder, build) in builders() {
        for (plugin, label, refreshes) in [
            (Plugin::Token, "token without expiry", false),
            (Plugin::Expiring(3600), "token valid for an hour", false),
            (
                Plugin::Expiring(30),
                "token expiring within the refresh margin",
                true,
            ),
        ] {
            let (user, counter) = setup.exec_plugin(&unique("lib"), plugin);
            let kc = write(setup, &setup.direct(setup.server.port()).user(user));
            let client = build(&kc)
                .await
                .unwrap_or_else(|e| panic!("{label} ({builder}): {}", display_chain(&e)));
            let built = counter.runs();
            // A round trip is three requests: get, create, get.
            lease_round_trip(client.clone(), label).await;
            lease_round_trip(client, label).await;
            let requests = 6;
            let runs = counter.runs();
            eprintln!(
                "exec plugin ({label}, {builder}): {built} run(s) to build the client, {runs} after {requests} requests"
            );
            assert_eq!(built, 1, "{label} ({builder}): runs to build the client");
            let expected = if refreshes { 1 + requests } else { 1 };
            assert_eq!(runs, expected, "{label} ({builder}): runs in all");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kubeconfig_with_anchors_aliases_and_merge_keys_is_accepted() {
    let setup = client_config::shared().await;
    let kc = setup.write("lib-anchored", &setup.anchored());
    round_trip(&kc, "anchors, aliases and merge keys").await;
}

/// Each field wrong in its own way: building the client or its first request fails with an
/// error that names the field (or the plugin); nothing panics, nothing falls back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_proxy_url_tls_server_name_and_exec_plugin_are_named_in_the_error() {
    let setup = client_config::shared().await;
    let port = setup.server.port();
    let closed = format!("127.0.0.1:{}", leasehold_testing::harness::free_port());
    let proxy = |url: &str| setup.proxied(port, Some(url.to_owned()));
    let (user, _) = PROXY_USER;
    let cases = [
        (
            "proxy-url socks5",
            proxy("socks5://127.0.0.1:1080"),
            vec!["proxy", "socks5://127.0.0.1:1080"],
        ),
        (
            "proxy-url not a URL",
            proxy("http://exa mple:80"),
            vec!["proxy-url `http://exa mple:80` is not a URL"],
        ),
        (
            "proxy-url unreachable",
            proxy(&format!("http://{closed}")),
            vec!["proxy-url", &closed],
        ),
        (
            "proxy-url with the wrong password",
            proxy(&Setup::proxy_url_with(&setup.auth_proxy, user, "wrong")),
            vec!["proxy-url"],
        ),
        (
            "tls-server-name not on the certificate",
            setup.sni(port, Some("other-name.leasehold.test")),
            vec!["tls-server-name", "other-name.leasehold.test"],
        ),
        (
            "tls-server-name not on the certificate, through the proxy",
            proxy(&setup.proxy.url()).tls_server_name("other-name.leasehold.test"),
            vec!["tls-server-name", "other-name.leasehold.test"],
        ),
        (
            "tls-server-name not a host name",
            setup.sni(port, Some("not a host name")),
            vec!["tls-server-name `not a host name` is neither a host name nor an IP address"],
        ),
    ];
    for (what, kc, needles) in cases {
        fails_naming(&write(setup, &kc), what, &needles).await;
    }
    for (plugin, what, needle) in [
        (
            Plugin::Fails,
            "exec plugin exits 3",
            "cannot reach its identity provider",
        ),
        (Plugin::Garbage, "exec plugin prints garbage", "exec output"),
    ] {
        let (user, counter) = setup.exec_plugin(&unique("lib-bad"), plugin);
        let kc = write(setup, &setup.direct(port).user(user));
        fails_naming(&kc, what, &["exec credential plugin", needle]).await;
        assert_eq!(counter.runs(), builders().len(), "{what}: runs");
    }
}
