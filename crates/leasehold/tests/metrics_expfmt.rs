//! The metrics exposition, checked by Prometheus's own text parser
//! (`github.com/prometheus/common/expfmt`, in `crates/leasehold-testing/go/expfmt-check`): two
//! electors in one process, one of them with an election name that holds a quote, a backslash
//! and a newline.

use leasehold::{Elector, ElectorHandle, LeaderRecord, Timing, metrics};
use leasehold_testing::mem::MemLock;
use std::{
    io::Write as _,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::OnceLock,
    time::Duration,
};
use tokio_util::sync::CancellationToken;

/// An election name as hostile as the text format allows: each character that must be escaped.
const HOSTILE: &str = "we\"ird\\na\nme";

/// Builds the checker once per test process, as `scripts/build-servers.sh` builds the Go peers
/// (`GOFLAGS=-mod=mod`, `GOTOOLCHAIN=auto` unless set, `CGO_ENABLED=0`), and returns its path.
///
/// # Panics
/// If Go is missing or the build fails: the check must not be skipped silently.
fn checker() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let src =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../leasehold-testing/go/expfmt-check");
        let tmp = Path::new(env!("CARGO_TARGET_TMPDIR"));
        let dir = tempfile::Builder::new()
            .prefix("expfmt-check")
            .tempdir_in(tmp)
            .expect("temp dir");
        let built = dir.path().join("expfmt-check");
        let out = Command::new(go())
            .current_dir(&src)
            .env("GOFLAGS", "-mod=mod")
            .env(
                "GOTOOLCHAIN",
                std::env::var("GOTOOLCHAIN").unwrap_or_else(|_| "auto".into()),
            )
            .env("CGO_ENABLED", "0")
            .args(["build", "-trimpath", "-ldflags=-s", "-o"])
            .arg(&built)
            .arg(".")
            .output()
            .expect("run go build");
        assert!(
            out.status.success(),
            "go build of {} failed: {}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        // Renamed into place, so that test processes running at once never see half a binary.
        let bin = tmp.join("expfmt-check");
        std::fs::rename(&built, &bin).expect("move the checker into place");
        bin
    })
}

/// `go` from PATH, else the toolchain `scripts/fetch-go.sh` keeps in the cache.
fn go() -> PathBuf {
    let on_path = Command::new("go")
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if on_path {
        return "go".into();
    }
    let cache = std::env::var_os("LEASEHOLD_CACHE").map_or_else(
        || PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cache/leasehold"),
        PathBuf::from,
    );
    let fetched = cache.join("go/bin/go");
    assert!(
        fetched.exists(),
        "no Go toolchain: install Go 1.21 or newer, or run scripts/fetch-go.sh"
    );
    fetched
}

/// Runs the checker on `exposition`: Ok(its summary) or Err(the parser's error).
fn check(exposition: &str) -> Result<String, String> {
    let mut child = Command::new(checker())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run expfmt-check");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(exposition.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// Two electors on two locks, run for a while on paused time: `app` leads and renews, the one
/// with the hostile name stands by behind another holder. Returns their handles.
async fn two_electors(cancel: &CancellationToken) -> (ElectorHandle, ElectorHandle) {
    let held = MemLock::new();
    held.put(LeaderRecord::new("other", 3600).with_renew_time(Some(jiff::Timestamp::now())));
    let a = Elector::new(MemLock::new(), "me", Timing::default()).unwrap();
    let b = Elector::new(held, "me", Timing::default()).unwrap();
    let (ha, hb) = (a.handle(), b.handle());
    tokio::spawn(a.run(cancel.clone()));
    tokio::spawn(b.run(cancel.clone()));
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(ha.is_leader() && !hb.is_leader());
    assert!(ha.metrics().renewals() > 0);
    (ha, hb)
}

#[tokio::test(start_paused = true)]
async fn two_electors_in_one_exposition_pass_prometheus_s_parser() {
    let cancel = CancellationToken::new();
    let (ha, hb) = two_electors(&cancel).await;
    let (sa, sb) = (ha.status(), hb.status());
    let mut out = String::new();
    metrics::encode(
        &[
            metrics::Election::new("app", ha.metrics(), &sa),
            metrics::Election::new(HOSTILE, hb.metrics(), &sb),
        ],
        &mut out,
    );
    match check(&out) {
        Ok(summary) => println!("expfmt-check accepts both electors:\n{summary}"),
        Err(e) => panic!("Prometheus's parser rejects the exposition: {e}\n{out}"),
    }
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn one_elector_still_passes_prometheus_s_parser() {
    let cancel = CancellationToken::new();
    let (_, hb) = two_electors(&cancel).await;
    let mut out = String::new();
    hb.metrics().encode(HOSTILE, &hb.status(), &mut out);
    if let Err(e) = check(&out) {
        panic!("Prometheus's parser rejects the exposition: {e}\n{out}");
    }
    cancel.cancel();
}

#[tokio::test(start_paused = true)]
async fn an_electors_set_passes_prometheus_s_parser() {
    let cancel = CancellationToken::new();
    let (ha, hb) = two_electors(&cancel).await;
    let electors = metrics::Electors::new();
    electors.insert("app", &ha);
    electors.insert(HOSTILE, &hb);
    let mut out = String::new();
    electors.encode(&mut out);
    assert!(
        out.contains("leader_election_master_status{name=\"app\"} 1\n"),
        "{out}"
    );
    if let Err(e) = check(&out) {
        panic!("Prometheus's parser rejects the exposition: {e}\n{out}");
    }
    cancel.cancel();
}

/// The collector in an application's own `prometheus-client` registry, beside a metric of the
/// application's, encoded by the registry in the Prometheus text format.
#[cfg(feature = "prometheus-client")]
#[tokio::test(start_paused = true)]
async fn the_collector_in_an_application_registry_passes_prometheus_s_parser() {
    use prometheus_client::{
        encoding::prometheus_text, metrics::counter::Counter, registry::Registry,
    };
    let cancel = CancellationToken::new();
    let (ha, hb) = two_electors(&cancel).await;
    let electors = metrics::Electors::new();
    electors.insert("app", &ha);
    electors.insert(HOSTILE, &hb);
    let mut registry = Registry::default();
    let requests: Counter = Counter::default();
    requests.inc();
    registry.register("app_requests", "Requests served.", requests);
    registry.register_collector(Box::new(electors));
    let mut out = String::new();
    prometheus_text::encode(&mut out, &registry).unwrap();
    match check(&out) {
        Ok(summary) => println!("expfmt-check accepts the registry:\n{summary}"),
        Err(e) => panic!("Prometheus's parser rejects the registry's exposition: {e}\n{out}"),
    }
    cancel.cancel();
}
