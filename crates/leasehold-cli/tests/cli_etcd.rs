//! `leasehold run --backend etcd` and `status` as processes against a real etcd, beside
//! `etcdctl elect`; and the etcd flags' bad input (unreachable, TLS mismatch, refused
//! credentials, denied access, a stray key) against real servers.
#![cfg(feature = "etcd")]

use leasehold_testing::{
    harness::{EtcdServer, bins, unique},
    history,
};
use std::{
    io::Write as _,
    path::Path,
    process::{Child, Command, Output, Stdio},
    time::{Duration, SystemTime},
};
use tokio::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_leasehold");

/// A child that appends `start ID TOKEN NANOS` when started and `stop ...` on SIGTERM, and
/// writes its pid to DIR/ID.pid.
const RECORDER: &str = r#"
echo $$ > "$DIR/$LEASEHOLD_IDENTITY.pid"
echo "start $LEASEHOLD_IDENTITY $LEASEHOLD_FENCING_TOKEN $(date +%s%N)" >> "$DIR/log"
trap 'echo "stop $LEASEHOLD_IDENTITY $LEASEHOLD_FENCING_TOKEN $(date +%s%N)" >> "$DIR/log"; exit 0' TERM
while true; do sleep 0.05; done
"#;

fn now_nanos() -> u128 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// `leasehold run --backend etcd` for `id` in the election `name`: 2 s lease, 1 s renew
/// deadline, running the recorder.
fn candidate(url: &str, name: &str, id: &str, dir: &Path, extra: &[&str]) -> Child {
    Command::new(BIN)
        .args([
            "run",
            "--backend",
            "etcd",
            "--endpoints",
            url,
            "--name",
            name,
        ])
        .args([
            "--id",
            id,
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1s",
        ])
        .args(["--retry-period", "200ms"])
        .args(extra)
        .args(["--", "sh", "-c", RECORDER])
        .env("DIR", dir)
        .env("LEASEHOLD_LOG", "debug")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join(format!("{id}.log"))).unwrap())
        .spawn()
        .unwrap()
}

fn leasehold(args: &[&str]) -> Output {
    Command::new(BIN).args(args).output().unwrap()
}

fn starts(dir: &Path) -> Vec<(String, u64)> {
    std::fs::read_to_string(dir.join("log"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<_> = l.split_whitespace().collect();
            (f.first() == Some(&"start")).then(|| (f[1].to_owned(), f[2].parse().unwrap()))
        })
        .collect()
}

async fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

fn status_json(url: &str, name: &str) -> serde_json::Value {
    let out = leasehold(&[
        "status",
        "--backend",
        "etcd",
        "--endpoints",
        url,
        "--name",
        name,
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// `GET target` on `addr`: the whole response.
fn http_get(addr: &str, target: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    resp
}

fn etcdctl(url: &str, args: &[&str]) -> Output {
    Command::new(bins().etcdctl)
        .args(["--endpoints", url])
        .args(args)
        .output()
        .unwrap()
}

/// Two sidecars and `etcdctl elect` in one election: `status` and the HTTP status show the
/// queue; a transfer goes to the next in line only, and at once; a SIGKILLed leader's successor starts only after its
/// lease; SIGTERM releases to `etcdctl`; one command at a time throughout, tokens increasing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sidecars_on_etcd_transfer_fail_over_and_release_to_etcdctl() {
    let etcd = EtcdServer::start().await;
    let url = etcd.url();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let name = unique("cli-etcd");
    let (ctl_a, http_b) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut a = candidate(&url, &name, "a", d, &["--control", &ctl_a]);
    assert!(wait_for(Duration::from_secs(20), || starts(d).len() == 1).await);
    let mut b = candidate(&url, &name, "b", d, &["--http", &http_b]);
    assert!(
        wait_for(Duration::from_secs(10), || {
            status_json(&url, &name)["candidates"]
                .as_array()
                .is_some_and(|c| c.len() == 2)
        })
        .await
    );

    // `status` lists the queue, leader first; `etcdctl elect -l` shows the leader's value.
    let s = status_json(&url, &name);
    assert_eq!(s["holder"], "a", "{s}");
    assert_eq!(s["candidates"][1]["value"], "b", "{s}");
    assert_eq!(s["fencing_token"], s["candidates"][0]["create_revision"]);
    assert_eq!(s["fencing_token"].as_u64(), Some(starts(d)[0].1), "{s}");
    let text = leasehold(&[
        "status",
        "--backend",
        "etcd",
        "--endpoints",
        &url,
        "--name",
        &name,
    ]);
    let text = String::from_utf8_lossy(&text.stdout).into_owned();
    assert!(text.contains("holder:          a"), "{text}");
    assert!(text.contains("  2. b  key "), "{text}");
    eprintln!("status:\n{text}");
    // b's HTTP status names a as the leader.
    assert!(
        wait_for(Duration::from_secs(5), || http_get(&http_b, "/")
            .contains(r#""leader":"a""#))
        .await,
        "{}",
        http_get(&http_b, "/")
    );
    let metrics = http_get(&http_b, "/metrics");
    assert!(
        metrics.contains("leader_election_master_status"),
        "{metrics}"
    );

    // A transfer goes only to the candidate next in line: refused for anyone else, naming b.
    let out = leasehold(&["step-down", "--control", &ctl_a, "--to", "nobody"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("only the candidate next in line can take over (that is `b`)"),
        "{err}"
    );
    assert_eq!(starts(d).len(), 1, "nothing moved");
    // Transfer to b: a's command stops, its key goes, b (next in line) leads at once.
    let asked = now_nanos();
    let out = leasehold(&["step-down", "--control", &ctl_a, "--to", "b"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(wait_for(Duration::from_secs(5), || starts(d).len() == 2).await);
    let log = std::fs::read_to_string(d.join("log")).unwrap();
    let b_started: u128 = log
        .lines()
        .find(|l| l.starts_with("start b "))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap();
    let took = Duration::from_nanos((b_started - asked) as u64);
    eprintln!("transfer to b's command running: {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // a queues again behind b after its hold-off.
    assert!(
        wait_for(Duration::from_secs(10), || {
            status_json(&url, &name)["candidates"]
                .as_array()
                .is_some_and(|c| c.len() == 2)
        })
        .await
    );

    // SIGKILL b: its watchdog stops its command; a leads only once b's lease has expired on
    // etcd (2 s), with a larger token.
    let child: i32 = std::fs::read_to_string(d.join("b.pid"))
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let killed = Instant::now();
    signal(&b, rustix::process::Signal::KILL);
    b.wait().unwrap();
    assert!(
        wait_for(Duration::from_secs(2), || !Path::new(&format!(
            "/proc/{child}"
        ))
        .exists()
            || std::fs::read_to_string(format!("/proc/{child}/stat"))
                .is_ok_and(|s| s
                    .rsplit(')')
                    .next()
                    .and_then(|r| r.split_whitespace().next())
                    == Some("Z")))
        .await,
        "b's command survived its leasehold's SIGKILL"
    );
    // It could not log its own end: record when it was seen dead (an upper bound).
    let line = format!("stop b {} {}\n", starts(d)[1].1, now_nanos());
    std::fs::OpenOptions::new()
        .append(true)
        .open(d.join("log"))
        .unwrap()
        .write_all(line.as_bytes())
        .unwrap();
    assert!(wait_for(Duration::from_secs(10), || starts(d).len() == 3).await);
    let failover = killed.elapsed();
    eprintln!("SIGKILL b -> a's command running after {failover:?}");
    assert!(
        failover >= Duration::from_secs(1),
        "before b's lease could expire: {failover:?}"
    );

    // etcdctl queues behind a; SIGTERM to a releases at once, and etcdctl prints its key.
    let mut elect = Command::new(bins().etcdctl)
        .args(["--endpoints", &url, "elect", &name, "from-etcdctl"])
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || {
            status_json(&url, &name)["candidates"]
                .as_array()
                .is_some_and(|c| c.len() == 2)
        })
        .await
    );
    signal(&a, rustix::process::Signal::TERM);
    assert_eq!(a.wait().unwrap().code(), Some(0));
    let mut first = String::new();
    let stdout = elect.stdout.take().unwrap();
    let mut reader = std::io::BufReader::new(stdout);
    std::io::BufRead::read_line(&mut reader, &mut first).unwrap();
    assert!(first.starts_with(&format!("{name}/")), "{first}");
    let s = status_json(&url, &name);
    assert_eq!(s["holder"], "from-etcdctl", "{s}");
    let tokens: Vec<u64> = starts(d).iter().map(|s| s.1).collect();
    assert!(tokens.windows(2).all(|w| w[0] < w[1]), "{tokens:?}");
    assert!(
        s["fencing_token"].as_u64().unwrap() > *tokens.last().unwrap(),
        "{s}"
    );
    eprintln!("tokens {tokens:?}, then etcdctl's {}", s["fencing_token"]);
    let _ = elect.kill();
    let _ = elect.wait();

    let log = std::fs::read_to_string(d.join("log")).unwrap();
    let intervals = history::parse_log(&log).unwrap();
    history::check(&intervals).unwrap_or_else(|e| panic!("{e}\n{log}"));
}

/// Bad input on etcd: each a clear error naming it, and nothing taken.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn etcd_bad_input_is_named_and_takes_nothing() {
    let status = |args: &[&str]| {
        let mut all = vec!["status", "--backend", "etcd", "--name", "bad"];
        all.extend(args);
        let out = leasehold(&all);
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Flags.
    for (args, want) in [
        (
            &["--namespace", "x"][..],
            "--namespace applies only to --backend kube",
        ),
        (
            &["--endpoints", "ftp://h:1"],
            "`ftp://h:1` is not an etcd endpoint",
        ),
        (&["--endpoints", "h"], "`h` has no port"),
        (
            &["--endpoints", "http://a:1,https://b:1"],
            "mixes http:// and https://",
        ),
        (
            &["--endpoints", "http://a:1", "--etcd-ca", "/x"],
            "--etcd-ca needs https:// endpoints",
        ),
        (
            &["--endpoints", "https://a:1", "--etcd-cert", "/x"],
            "--etcd-cert needs --etcd-key",
        ),
        (&["--etcd-user", "u"], "--etcd-user u needs a password"),
        (
            &["--endpoints", "https://a:1", "--etcd-ca", "/nonexistent"],
            "--etcd-ca /nonexistent: No such file",
        ),
    ] {
        let (code, err) = status(args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
    let out = leasehold(&[
        "status",
        "--backend",
        "file",
        "--name",
        "a",
        "--endpoints",
        "h:1",
    ]);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("--endpoints applies only to --backend etcd")
    );

    // Unreachable: `status` fails naming the endpoint; `run` says so and keeps trying, taking
    // nothing.
    let dead = format!("127.0.0.1:{}", free_port());
    let (code, err) = status(&["--endpoints", &dead]);
    assert_eq!(code, Some(1), "{err}");
    assert!(
        err.contains(&format!("etcd at http://{dead}: cannot reach etcd"))
            && err.contains("Connection refused"),
        "{err}"
    );
    eprintln!("unreachable: {}", err.trim());

    // TLS: a server that wants TLS and a client certificate.
    let tls = EtcdServer::start_tls().await;
    let [ca, cert, key, other_ca] = tls.tls_files().map(|p| p.display().to_string());
    let url = tls.url();
    let plain = url.replace("https://", "http://");
    let mismatches: [(&str, Vec<&str>); 3] = [
        ("plain http to a TLS server", vec!["--endpoints", &plain]),
        (
            "a CA that did not sign the server",
            vec![
                "--endpoints",
                &url,
                "--etcd-ca",
                &other_ca,
                "--etcd-cert",
                &cert,
                "--etcd-key",
                &key,
            ],
        ),
        (
            "no client certificate",
            vec!["--endpoints", &url, "--etcd-ca", &ca],
        ),
    ];
    for (what, args) in &mismatches {
        let (code, err) = status(args);
        assert_eq!(code, Some(1), "{what}: {err}");
        eprintln!("{what}: {}", err.trim());
        // The server refuses a client without a certificate with a TLS alert, or, when the
        // alert loses the race with the close, by closing: either is named.
        if *what == "no client certificate" {
            assert!(
                err.contains("CertificateRequired")
                    || err.contains("does it require a client certificate?"),
                "{what}: {err}"
            );
            continue;
        }
        let want = match *what {
            "plain http to a TLS server" => "does it serve TLS? then use https:// endpoints",
            _ => "TLS with etcd failed",
        };
        assert!(err.contains(want), "{what}: {err}");
    }
    let good = [
        "--endpoints",
        &url,
        "--etcd-ca",
        &ca,
        "--etcd-cert",
        &cert,
        "--etcd-key",
        &key,
    ];
    let (code, err) = status(&good);
    assert_eq!(code, Some(0), "{err}");
    // A `run` with a TLS mismatch ends at once (it would not mend), holding nothing.
    let mut run_args = vec!["run", "--backend", "etcd", "--name", "bad", "--id", "x"];
    run_args.extend(["--endpoints", &url, "--etcd-ca", &other_ca]);
    let out = Command::new(BIN).args(&run_args).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("TLS with etcd failed"), "{err}");
    let mut with = vec!["--name", "bad", "--json"];
    with.extend(good);
    let mut all = vec!["status", "--backend", "etcd"];
    all.extend(with);
    let s: serde_json::Value = serde_json::from_slice(&leasehold(&all).stdout).unwrap();
    assert_eq!(s["holder"], serde_json::Value::Null, "{s}");
    drop(tls);

    // Credentials: a server with auth on; a user whose role covers another prefix only.
    let etcd = EtcdServer::start().await;
    let url = etcd.url();
    let ctl = |args: &[&str]| {
        let out = etcdctl(&url, args);
        assert!(out.status.success(), "etcdctl {args:?}: {out:?}");
    };
    ctl(&["user", "add", "root", "--new-user-password", "rootpw"]);
    ctl(&["user", "add", "app", "--new-user-password", "apppw"]);
    ctl(&["role", "add", "other"]);
    ctl(&[
        "role",
        "grant-permission",
        "other",
        "readwrite",
        "other/",
        "--prefix",
    ]);
    ctl(&["user", "grant-role", "app", "other"]);
    ctl(&["auth", "enable"]);
    let pw = dir_with("pw", "wrong\n");
    let (code, err) = status(&[
        "--endpoints",
        &url,
        "--etcd-user",
        "root",
        "--etcd-password-file",
        pw.1.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("etcd refused the credentials"), "{err}");
    eprintln!("wrong password: {}", err.trim());
    let out = Command::new(BIN)
        .args([
            "status",
            "--backend",
            "etcd",
            "--name",
            "bad",
            "--endpoints",
            &url,
        ])
        .args(["--etcd-user", "app"])
        .env("ETCDCTL_PASSWORD", "apppw")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains("etcd denied access to the keys under `bad/`"),
        "{err}"
    );
    eprintln!("denied: {}", err.trim());
    // The right user works, from the password file (its line break is not the password).
    let pw = dir_with("pw", "rootpw\n");
    let (code, err) = status(&[
        "--endpoints",
        &url,
        "--etcd-user",
        "root",
        "--etcd-password-file",
        pw.1.to_str().unwrap(),
    ]);
    assert_eq!(code, Some(0), "{err}");

    // A stray key (no lease) under the prefix: `status` flags it; a candidate queues behind it
    // and does not lead.
    let out = Command::new(bins().etcdctl)
        .args([
            "--endpoints",
            &url,
            "--user",
            "root:rootpw",
            "put",
            "bad/stray",
            "x",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let out = Command::new(BIN)
        .args([
            "status",
            "--backend",
            "etcd",
            "--name",
            "bad",
            "--endpoints",
            &url,
        ])
        .args(["--etcd-user", "root"])
        .env("ETCDCTL_PASSWORD", "rootpw")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("no lease: a stray key"), "{text}");
    let d = tempfile::tempdir().unwrap();
    let mut c = Command::new(BIN)
        .args([
            "run",
            "--backend",
            "etcd",
            "--name",
            "bad",
            "--id",
            "q",
            "--endpoints",
            &url,
        ])
        .args([
            "--etcd-user",
            "root",
            "--ttl",
            "3s",
            "--",
            "sh",
            "-c",
            RECORDER,
        ])
        .env("ETCDCTL_PASSWORD", "rootpw")
        .env("DIR", d.path())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.path().join("q.log")).unwrap())
        .spawn()
        .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        starts(d.path()).is_empty(),
        "behind a stray key nobody leads"
    );
    signal(&c, rustix::process::Signal::TERM);
    assert_eq!(c.wait().unwrap().code(), Some(0));
    let log = std::fs::read_to_string(d.path().join("q.log")).unwrap();
    assert!(
        log.contains("has no lease") && log.contains("bad/stray"),
        "{log}"
    );
}

/// A file `name` with `text` in a new temporary directory (kept alive by the first element).
fn dir_with(name: &str, text: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join(name);
    std::fs::write(&p, text).unwrap();
    (d, p)
}
