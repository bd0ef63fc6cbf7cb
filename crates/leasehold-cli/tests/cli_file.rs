//! `leasehold run` and `status` as users run them, on the file backend: real processes, real
//! signals, children that record their intervals.

use leasehold_testing::history;
use std::{
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
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

fn leasehold(dir: &Path, id: &str, extra: &[&str], command: &[&str]) -> Child {
    leasehold_cmd(dir, id, extra, command)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap()
}

/// `leasehold run` on the file backend in `dir`, 2 s / 1 s / 200 ms.
fn leasehold_cmd(dir: &Path, id: &str, extra: &[&str], command: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(["run", "--backend", "file", "--name", "t", "--id", id])
        .arg("--file")
        .arg(dir.join("lock.json"))
        .args([
            "--lease-duration",
            "2s",
            "--renew-deadline",
            "1s",
            "--retry-period",
            "200ms",
        ])
        .args(extra);
    if !command.is_empty() {
        cmd.arg("--").args(command);
    }
    cmd.env("DIR", dir).env("LEASEHOLD_LOG", "debug");
    cmd
}

fn wait_for(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < limit {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
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

fn is_dead(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(s) => {
            s.rsplit(')')
                .next()
                .and_then(|r| r.split_whitespace().next())
                == Some("Z")
        }
    }
}

fn pid_of(dir: &Path, id: &str) -> i32 {
    std::fs::read_to_string(dir.join(format!("{id}.pid")))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

fn signal(child: &Child, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(child.id() as i32).unwrap();
    rustix::process::kill_process(pid, sig).unwrap();
}

#[test]
fn kill_9_of_the_leader_hands_over_without_overlap_and_tokens_increase() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ids = ["c0", "c1", "c2"];
    let mut procs: Vec<(String, Child)> = ids
        .iter()
        .map(|id| {
            (
                id.to_string(),
                leasehold(d, id, &[], &["sh", "-c", RECORDER]),
            )
        })
        .collect();

    for round in 0..2 {
        assert!(
            wait_for(Duration::from_secs(10), || starts(d).len() == round + 1),
            "a leader started its child"
        );
        let (leader, _) = starts(d).last().unwrap().clone();
        let child_pid = pid_of(d, &leader);
        let idx = procs.iter().position(|(id, _)| *id == leader).unwrap();
        let (_, mut p) = procs.remove(idx);
        p.kill().unwrap(); // SIGKILL of the elector: the child must die with it
        p.wait().unwrap();
        assert!(
            wait_for(Duration::from_secs(1), || is_dead(child_pid)),
            "child survived its leasehold's SIGKILL"
        );
        // The child could not log its own end: record when it was seen dead (an upper bound).
        let line = format!(
            "stop {leader} {} {}\n",
            starts(d).last().unwrap().1,
            now_nanos()
        );
        std::fs::OpenOptions::new()
            .append(true)
            .open(d.join("log"))
            .unwrap()
            .write_all(line.as_bytes())
            .unwrap();
    }
    assert!(wait_for(Duration::from_secs(10), || starts(d).len() == 3));
    for (_, p) in &procs {
        signal(p, rustix::process::Signal::TERM);
    }
    for (_, mut p) in procs {
        let status = p.wait().unwrap();
        assert_eq!(status.code(), Some(0), "SIGTERM exits 0");
    }
    let log = std::fs::read_to_string(d.join("log")).unwrap();
    let intervals = history::parse_log(&log).unwrap();
    assert_eq!(intervals.len(), 3, "{log}");
    history::check(&intervals).unwrap_or_else(|e| panic!("{e}\n{log}"));
}

use std::io::Write as _;

#[test]
fn a_frozen_elector_cannot_keep_its_child_running_past_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A child that ignores SIGTERM (only SIGKILL stops it) and logs its start and token.
    let stubborn = r#"echo $$ > "$DIR/$LEASEHOLD_IDENTITY.pid"; echo "start $LEASEHOLD_IDENTITY $LEASEHOLD_FENCING_TOKEN $(date +%s%N)" >> "$DIR/log"; trap '' TERM; while true; do sleep 0.05; done"#;
    // leasehold in a process group of its own, so the whole group can be frozen as Ctrl-Z or
    // `kill -STOP -PGID` would do.
    let mut p = Command::new(BIN)
        .args([
            "run",
            "--backend",
            "file",
            "--name",
            "t",
            "--id",
            "frozen",
            "--file",
        ])
        .arg(d.join("lock.json"))
        .args([
            "--lease-duration",
            "3s",
            "--renew-deadline",
            "2s",
            "--retry-period",
            "400ms",
            "--",
            "sh",
            "-c",
            stubborn,
        ])
        .env("DIR", d)
        .process_group(0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let group = rustix::process::Pid::from_raw(p.id() as i32).unwrap();
    assert!(wait_for(Duration::from_secs(10), || starts(d).len() == 1));
    let child = pid_of(d, "frozen");
    std::thread::sleep(Duration::from_millis(500));
    rustix::process::kill_process_group(group, rustix::process::Signal::STOP).unwrap();
    let frozen_at = Instant::now();
    assert!(
        wait_for(Duration::from_secs(6), || is_dead(child)),
        "child still running 6 s after its elector's group froze"
    );
    let took = frozen_at.elapsed();
    // Others may take over 3 s (lease) after observing the last renewal, which was sent before
    // the freeze: the child must be dead before that.
    assert!(
        took < Duration::from_secs(3),
        "child died {took:?} after the freeze, not before the lease (3 s)"
    );

    // Thawed, leasehold learns its term ended, keeps running, and leads again in a new term
    // with a new child (never the old term's).
    rustix::process::kill_process_group(group, rustix::process::Signal::CONT).unwrap();
    assert!(
        wait_for(Duration::from_secs(10), || starts(d).len() == 2),
        "no new term after the thaw"
    );
    assert!(
        p.try_wait().unwrap().is_none(),
        "leasehold exited after the thaw"
    );
    let tokens: Vec<u64> = starts(d).iter().map(|s| s.1).collect();
    assert!(tokens[1] > tokens[0], "{tokens:?}");
    signal(&p, rustix::process::Signal::TERM);
    std::thread::sleep(Duration::from_millis(200));
    signal(&p, rustix::process::Signal::TERM); // the child ignores SIGTERM: a second signal kills it
    assert_eq!(p.wait().unwrap().code(), Some(0));
}

#[test]
fn the_childs_exit_code_is_leaseholds_and_the_lease_is_released() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = leasehold(dir.path(), "x", &[], &["sh", "-c", "exit 7"]);
    assert_eq!(p.wait().unwrap().code(), Some(7));
    let out = Command::new(BIN)
        .args([
            "status",
            "--backend",
            "file",
            "--name",
            "t",
            "--json",
            "--file",
        ])
        .arg(dir.path().join("lock.json"))
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["holder"], "", "released: {v}");
    assert_eq!(v["lease_duration_seconds"], 1);
    assert_eq!(v["transitions"], 0);
    for key in ["acquire_time", "renew_time"] {
        assert!(v[key].is_string(), "{key}: {v}");
    }
}

#[test]
fn without_a_command_it_prints_transitions_and_releases_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let mut p = leasehold(dir.path(), "solo", &[], &[]);
    let stdout = p.stdout.take().unwrap();
    let lines = leasehold_testing::harness::stamp_lines(stdout);
    let (_, first) = lines.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(first, "leading: solo (fencing token 0)");
    signal(&p, rustix::process::Signal::TERM);
    assert_eq!(p.wait().unwrap().code(), Some(0));
    let rest: Vec<String> = lines.iter().map(|(_, l)| l).collect();
    assert!(
        rest.iter()
            .any(|l| l == "stopped leading: solo (fencing token 0)"),
        "{rest:?}"
    );
    let rec: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("lock.json")).unwrap()).unwrap();
    assert_eq!(rec["holderIdentity"], "");
}

#[test]
fn bad_input_exits_64_naming_the_problem() {
    let run = |args: &[&str]| {
        let out = Command::new(BIN).args(args).output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let cases: &[(&[&str], &str)] = &[
        (&["run"], "--name is required"),
        (
            &["run", "--name", "a", "--lease-duration", "10"],
            "--lease-duration",
        ),
        (
            &["run", "--name", "a", "--retry-period", "fast"],
            "--retry-period",
        ),
        (&["run", "--name", "a", "--ttl", "1500ms"], "--ttl"),
        (&["run", "--name", "a", "--frobnicate"], "--frobnicate"),
        (
            &["run", "--name", "a", "--backend", "zookeeper"],
            "--backend",
        ),
        (
            &["status", "--name", "a", "--backend", "file", "--id", "x"],
            "--id",
        ),
        (
            &[
                "run",
                "--name",
                "a",
                "--kubeconfig",
                "/nonexistent/kubeconfig",
            ],
            "--kubeconfig",
        ),
        (&["bogus"], "bogus"),
        (
            &["run", "--name", "a", "--control", "0.0.0.0:9091"],
            "--control: `0.0.0.0:9091` is not a loopback address",
        ),
        (&["step-down"], "--control is required"),
        (
            &[
                "step-down",
                "--control",
                "127.0.0.1:1",
                "--hold-off",
                "soon",
            ],
            "--hold-off",
        ),
        (
            &["step-down", "--control", "127.0.0.1:1", "--to", ""],
            "--to must name a candidate",
        ),
        (
            &[
                "step-down",
                "--control",
                "127.0.0.1:1",
                "--to",
                "x",
                "--hold-off",
                "1s",
            ],
            "--hold-off and --to",
        ),
        (
            &["step-down", "--control", "127.0.0.1:1", "--frobnicate", "x"],
            "--frobnicate",
        ),
        (
            &["run", "--name", "a", "--health-cmd", "no-such-probe --ok"],
            "--health-cmd: cannot run `no-such-probe`: not found",
        ),
        (
            &["run", "--name", "a", "--health-url", "https://x/healthz"],
            "only http://",
        ),
        (
            &[
                "run",
                "--name",
                "a",
                "--health-cmd",
                "true",
                "--health-url",
                "http://x/",
            ],
            "give one probe, not both",
        ),
        (
            &["run", "--name", "a", "--health-period", "1s"],
            "--health-period needs a probe",
        ),
        (
            &[
                "run",
                "--name",
                "a",
                "--health-cmd",
                "true",
                "--health-failures",
                "0",
            ],
            "--health-failures: `0` is not a whole number of at least 1",
        ),
        (
            &["run", "--name", "a", "--name", "b"],
            "--name is given twice",
        ),
        (
            &[
                "run",
                "--name",
                "a",
                "--backend",
                "file",
                "--file",
                "/nonexistent/dir/x.json",
            ],
            "the directory /nonexistent/dir does not exist",
        ),
        (
            &["run", "--name", "a", "--backend", "file", "--file", "/tmp"],
            "is a directory",
        ),
        (
            &["run", "--name", "a", "--backend", "file", "--"],
            "`--` must be followed by a command",
        ),
    ];
    for (args, needle) in cases {
        let (code, err) = run(args);
        assert_eq!(code, Some(64), "{args:?}: {err}");
        assert!(
            err.contains(needle),
            "{args:?}: message should name {needle}: {err}"
        );
    }
    // A corrupt record: status fails with the path and never rewrites the file.
    let dir = tempfile::tempdir().unwrap();
    let f: PathBuf = dir.path().join("bad.json");
    std::fs::write(&f, "garbage").unwrap();
    let out = Command::new(BIN)
        .args(["status", "--backend", "file", "--name", "a", "--file"])
        .arg(&f)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("bad.json") && err.contains("corrupt"), "{err}");
    assert_eq!(std::fs::read_to_string(&f).unwrap(), "garbage");
}

fn record(dir: &Path) -> Option<serde_json::Value> {
    let bytes = std::fs::read(dir.join("lock.json")).ok()?;
    serde_json::from_slice(&bytes).ok()
}

#[test]
fn a_command_that_cannot_run_never_takes_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let not_exec = dir.path().join("not-executable");
    std::fs::write(&not_exec, "#!/bin/sh\n").unwrap();
    let missing = dir.path().join("missing");
    let cases = [
        (missing.to_str().unwrap(), 127, "not found"),
        ("no-such-command-anywhere", 127, "not found"),
        (not_exec.to_str().unwrap(), 126, "not an executable file"),
        (dir.path().to_str().unwrap(), 126, "not an executable file"),
    ];
    for (program, code, why) in cases {
        let out = Command::new(BIN)
            .args(["run", "--backend", "file", "--name", "t", "--file"])
            .arg(dir.path().join("lock.json"))
            .args(["--", program])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{program}: {err}");
        assert!(
            err.contains(&format!("cannot run `{program}`: {why}")),
            "{program}: {err}"
        );
        assert!(
            record(dir.path()).is_none(),
            "{program}: nothing was written"
        );
    }
}

#[test]
fn a_command_that_fails_to_start_once_leading_releases_the_lease() {
    let dir = tempfile::tempdir().unwrap();
    let mut holder = leasehold(dir.path(), "a", &[], &[]);
    let lines = leasehold_testing::harness::stamp_lines(holder.stdout.take().unwrap());
    assert_eq!(
        lines.recv_timeout(Duration::from_secs(10)).unwrap().1,
        "leading: a (fencing token 0)"
    );
    // Runnable when b starts (so it contends), gone by the time b leads.
    let prog = dir.path().join("prog");
    std::fs::write(&prog, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let b = leasehold_cmd(dir.path(), "b", &[], &[prog.to_str().unwrap()])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::remove_file(&prog).unwrap();
    signal(&holder, rustix::process::Signal::TERM);
    assert_eq!(holder.wait().unwrap().code(), Some(0));
    let out = b.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot start"), "{err}");
    let rec = record(dir.path()).unwrap();
    assert_eq!(
        rec["holderIdentity"], "",
        "b released the term it could not use: {rec}"
    );
    assert_eq!(rec["leaderTransitions"], 1, "{rec}");
}

#[test]
fn a_closed_stdout_does_not_stop_it_or_skip_the_release() {
    let dir = tempfile::tempdir().unwrap();
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader); // every line leasehold prints now meets EPIPE
    let out = leasehold_cmd(dir.path(), "x", &[], &["sh", "-c", "sleep 0.3; exit 5"])
        .stdout(writer)
        .stderr(Stdio::piped())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "the child's code: {err}");
    assert!(!err.contains("panicked"), "{err}");
    let rec = record(dir.path()).unwrap();
    assert_eq!(rec["holderIdentity"], "", "released: {rec}");
}

#[test]
fn a_log_filter_that_is_not_a_level_is_reported() {
    let dir = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["run", "--backend", "file", "--name", "t", "--file"])
        .arg(dir.path().join("lock.json"))
        .args(["--", "true"])
        .env("LEASEHOLD_LOG", "warning")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("`warning` is not a level") && err.contains("logging at info"),
        "{err}"
    );
}

#[test]
fn a_kubeconfig_that_exists_but_cannot_be_used_is_an_error_not_a_fallback() {
    let dir = tempfile::tempdir().unwrap();
    let broken = dir.path().join("broken");
    std::fs::write(&broken, "apiVersion: v1\nclusters: [oops\n").unwrap();
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "").unwrap();
    let status = |env: Option<&Path>, flag: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(["status", "--name", "a"]);
        if let Some(f) = flag {
            cmd.arg("--kubeconfig").arg(f);
        }
        // In-cluster credentials would be found here if leasehold fell back to them.
        cmd.env_remove("KUBECONFIG")
            .env("KUBERNETES_SERVICE_HOST", "127.0.0.1")
            .env("KUBERNETES_SERVICE_PORT", "1");
        if let Some(e) = env {
            cmd.env("KUBECONFIG", e);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = status(Some(&broken), None);
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains(&format!("kubeconfig {}", broken.display())),
        "{err}"
    );
    let (code, err) = status(None, Some(&empty));
    assert_eq!(code, Some(64), "{err}");
    assert!(
        err.contains("it sets no current-context (it is empty)"),
        "{err}"
    );
    let (code, err) = status(Some(&empty), None);
    assert_eq!(code, Some(64), "{err}");
    assert!(err.contains("no current-context"), "{err}");
}

/// The default `--file` lives in a directory that may be private to the user or the service
/// (`$XDG_RUNTIME_DIR`; the temporary directory under systemd's `PrivateTmp=` or in a
/// container), where two services with one `--name` would hold two different locks: `run` and
/// `status` say which file they chose and why, once; with `--file` they say nothing.
#[test]
fn without_file_the_default_path_and_why_it_may_be_private_are_logged_once() {
    let xdg = tempfile::tempdir().unwrap();
    let tmp = tempfile::tempdir().unwrap();
    let name = "default-file-warning";
    let stderr = |args: &[&str], xdg_dir: Option<&Path>| {
        let mut cmd = Command::new(BIN);
        cmd.args(args)
            .env("LEASEHOLD_LOG", "info")
            .env("TMPDIR", tmp.path());
        match xdg_dir {
            Some(d) => cmd.env("XDG_RUNTIME_DIR", d),
            None => cmd.env_remove("XDG_RUNTIME_DIR"),
        };
        let out = cmd.output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).into_owned();
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        err
    };
    let warnings = |err: &str, path: &Path| {
        err.lines()
            .filter(|l| l.contains("WARN") && l.contains(&*path.to_string_lossy()))
            .count()
    };

    let run = ["run", "--backend", "file", "--name", name, "--", "true"];
    let err = stderr(&run, Some(xdg.path()));
    let path = xdg.path().join(format!("leasehold-{name}.json"));
    assert_eq!(warnings(&err, &path), 1, "{err}");
    assert!(
        err.contains("XDG_RUNTIME_DIR") && err.contains("pass --file"),
        "{err}"
    );

    let status = ["status", "--backend", "file", "--name", name];
    let err = stderr(&status, None);
    let path = tmp.path().join(format!("leasehold-{name}.json"));
    assert_eq!(warnings(&err, &path), 1, "{err}");
    assert!(
        err.contains("TMPDIR") && err.contains("pass --file"),
        "{err}"
    );

    let explicit = xdg.path().join("shared.json");
    for args in [&run[..5], &status[..]] {
        let mut args: Vec<&str> = args.to_vec();
        args.extend(["--file", explicit.to_str().unwrap()]);
        if args[0] == "run" {
            args.extend(["--", "true"]);
        }
        let err = stderr(&args, Some(xdg.path()));
        assert!(
            !err.contains("WARN") && !err.contains(&format!("leasehold-{name}.json")),
            "{args:?}: {err}"
        );
    }
}

/// A `--file` that is a symbolic link (here dangling, to a file in another directory) is
/// followed: the record and its lock file are the target's, the link stays a link, and nothing
/// is left beside it; a loop of links is a usage error naming the path.
#[test]
fn a_symlinked_file_is_followed_and_a_loop_is_a_usage_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("real")).unwrap();
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink("real/lock.json", &link).unwrap();
    let out = Command::new(BIN)
        .args(["run", "--backend", "file", "--name", "t", "--file"])
        .arg(&link)
        .args(["--", "true"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink()
    );
    assert!(record(&dir.path().join("real")).is_some(), "{err}");
    assert!(dir.path().join("real/lock.json.lock").exists());
    assert!(!dir.path().join("link.json.lock").exists());

    let a = dir.path().join("a.json");
    std::os::unix::fs::symlink("b.json", &a).unwrap();
    std::os::unix::fs::symlink("a.json", dir.path().join("b.json")).unwrap();
    let out = Command::new(BIN)
        .args(["status", "--backend", "file", "--name", "t", "--file"])
        .arg(&a)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains(&format!("--file {}: ", a.display())) && err.contains("symbolic links"),
        "{err}"
    );
}

/// A free loopback port (bound, then released).
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn step_down(args: &[&str]) -> (Option<i32>, String, String) {
    let out = Command::new(BIN)
        .arg("step-down")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn step_down_stops_the_command_releases_and_a_standby_takes_over_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ctl_a, http_a) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let mut a = leasehold(
        d,
        "a",
        &["--control", &ctl_a, "--http", &http_a],
        &["sh", "-c", RECORDER],
    );
    assert!(wait_for(Duration::from_secs(10), || starts(d).len() == 1));
    let mut b = leasehold(d, "b", &[], &["sh", "-c", RECORDER]);
    std::thread::sleep(Duration::from_millis(500)); // b stands by, watching the file

    // Refused: on the status port; for another election; with a bad parameter.
    let resp = http_request(&http_a, "POST", "/step-down");
    assert!(resp.starts_with("HTTP/1.1 403"), "{resp}");
    assert!(resp.contains("only on the --control address"), "{resp}");
    let resp = http_request(&ctl_a, "POST", "/step-down?hold-off=soon");
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let (code, _, err) = step_down(&["--control", &ctl_a, "--name", "other"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("is in election `t`, not `other`"), "{err}");
    assert_eq!(starts(d).len(), 1, "nothing moved");

    let asked = now_nanos();
    let (code, out, err) = step_down(&["--control", &ctl_a, "--name", "t", "--hold-off", "30s"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("stepping down: a (fencing token 0); not contending for 30s"),
        "{out}"
    );
    assert!(wait_for(Duration::from_secs(5), || starts(d).len() == 2));
    let log = std::fs::read_to_string(d.join("log")).unwrap();
    let intervals = history::parse_log(&log).unwrap();
    history::check(&intervals).unwrap_or_else(|e| panic!("{e}\n{log}"));
    let (who, token) = starts(d)[1].clone();
    assert_eq!((who.as_str(), token), ("b", 1), "{log}");
    let b_started = started_at(&log, "b");
    let took = Duration::from_nanos((b_started - asked) as u64);
    // a's command stops at once (the recorder exits on SIGTERM); then the release; b, watching,
    // takes over: well under the 2 s lease a crash would cost.
    assert!(
        took < Duration::from_millis(1500),
        "b took over {took:?} after the request"
    );
    eprintln!("step-down to b's command running: {took:?}");

    // a, asked again while standing by, says so.
    let (code, out, _) = step_down(&["--control", &ctl_a]);
    assert_eq!(code, Some(0));
    assert!(
        out.starts_with("not leading: a; not contending for 2s"),
        "{out}"
    );

    for p in [&a, &b] {
        signal(p, rustix::process::Signal::TERM);
    }
    assert_eq!(a.wait().unwrap().code(), Some(0));
    assert_eq!(b.wait().unwrap().code(), Some(0));
    // Nothing listens any more: a clear error naming the address.
    let (code, _, err) = step_down(&["--control", &ctl_a]);
    assert_eq!(code, Some(1));
    assert!(
        err.contains(&format!(
            "cannot reach the sidecar's control address {ctl_a}"
        )),
        "{err}"
    );
}

#[test]
fn an_unhealthy_candidate_never_contends_and_an_unhealthy_leader_hands_over() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let args = |id: &str| {
        vec![
            "--health-cmd".to_owned(),
            format!("test -e {}/healthy-{id}", d.display()),
            "--health-period".into(),
            "200ms".into(),
            "--health-failures".into(),
            "2".into(),
        ]
    };
    let (a_args, b_args) = (args("a"), args("b"));
    let a_ref: Vec<&str> = a_args.iter().map(String::as_str).collect();
    let b_ref: Vec<&str> = b_args.iter().map(String::as_str).collect();
    // Neither is healthy at first: neither may lead, though the lock is free.
    let mut b = leasehold(d, "b", &b_ref, &["sh", "-c", RECORDER]);
    let mut a = leasehold(d, "a", &a_ref, &["sh", "-c", RECORDER]);
    std::thread::sleep(Duration::from_secs(2));
    assert!(starts(d).is_empty(), "nobody healthy, nobody leads");
    std::fs::write(d.join("healthy-a"), "").unwrap();
    assert!(wait_for(Duration::from_secs(5), || starts(d).len() == 1));
    assert_eq!(starts(d)[0].0, "a");
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(starts(d).len(), 1, "b, unhealthy, never took over");

    // a turns unhealthy, b healthy: a steps down after 2 failures and releases; b takes over.
    std::fs::write(d.join("healthy-b"), "").unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let turned = now_nanos();
    std::fs::remove_file(d.join("healthy-a")).unwrap();
    assert!(wait_for(Duration::from_secs(5), || starts(d).len() == 2));
    let log = std::fs::read_to_string(d.join("log")).unwrap();
    let intervals = history::parse_log(&log).unwrap();
    history::check(&intervals).unwrap_or_else(|e| panic!("{e}\n{log}"));
    assert_eq!(starts(d)[1], ("b".to_owned(), 1), "{log}");
    let b_started = started_at(&log, "b");
    let took = Duration::from_nanos((b_started - turned) as u64);
    eprintln!("probe failing to the healthy standby's command running: {took:?}");
    assert!(
        took < Duration::from_secs(2),
        "{took:?}: a released, not left to expire"
    );
    for p in [&a, &b] {
        signal(p, rustix::process::Signal::TERM);
    }
    assert_eq!(a.wait().unwrap().code(), Some(0));
    assert_eq!(b.wait().unwrap().code(), Some(0));
}

#[test]
fn a_probe_that_hangs_fails_at_its_timeout_and_is_named_in_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let child = leasehold_cmd(
        d,
        "h",
        &[
            "--health-cmd",
            "sleep 31",
            "--health-period",
            "300ms",
            "--health-timeout",
            "200ms",
        ],
        &["sh", "-c", RECORDER],
    )
    .stdout(Stdio::null())
    .stderr(Stdio::piped())
    .spawn()
    .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    signal(&child, rustix::process::Signal::TERM);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(
        err.contains("health probe failed: no result within 200ms; killed"),
        "{err}"
    );
    assert!(err.contains("--health-cmd `sleep 31`"), "{err}");
    assert!(starts(d).is_empty(), "never led");
    let left = Command::new("pgrep")
        .args(["-fx", "sleep 31"])
        .output()
        .unwrap();
    assert!(left.stdout.is_empty(), "the hung probe was killed");
}

/// `METHOD target` on `addr`, one request per connection: the whole response.
fn http_request(addr: &str, method: &str, target: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut resp = String::new();
    std::io::Read::read_to_string(&mut s, &mut resp).unwrap();
    resp
}

/// When the recorder logged `start ID ...`, in nanoseconds since the epoch.
fn started_at(log: &str, id: &str) -> u128 {
    log.lines()
        .find(|l| l.starts_with(&format!("start {id} ")))
        .and_then(|l| l.rsplit(' ').next())
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn ready_when_elected_is_ready_on_every_candidate_once_one_leads() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ha, hb) = (
        format!("127.0.0.1:{}", free_port()),
        format!("127.0.0.1:{}", free_port()),
    );
    let flags = |h: &str| {
        [
            "--http".to_owned(),
            h.to_owned(),
            "--ready-when".into(),
            "elected".into(),
        ]
    };
    let (fa, fb) = (flags(&ha), flags(&hb));
    let fa: Vec<&str> = fa.iter().map(String::as_str).collect();
    let fb: Vec<&str> = fb.iter().map(String::as_str).collect();
    let mut a = leasehold(d, "a", &fa, &["sh", "-c", RECORDER]);
    assert!(wait_for(Duration::from_secs(10), || starts(d).len() == 1));
    let mut b = leasehold(d, "b", &fb, &["sh", "-c", RECORDER]);
    assert!(wait_for(Duration::from_secs(5), || {
        std::net::TcpStream::connect(&hb).is_ok()
            && http_request(&hb, "GET", "/readyz").contains("ok: a leads")
    }));
    let resp = http_request(&ha, "GET", "/readyz");
    assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    assert!(resp.contains("ok: leading"), "{resp}");
    for p in [&a, &b] {
        signal(p, rustix::process::Signal::TERM);
    }
    assert_eq!(a.wait().unwrap().code(), Some(0));
    assert_eq!(b.wait().unwrap().code(), Some(0));
}

#[test]
fn a_transfer_hands_over_to_the_named_candidate_within_milliseconds_and_to_no_other() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ctl = |_: ()| format!("127.0.0.1:{}", free_port());
    let (ctl_a, ctl_b) = (ctl(()), ctl(()));
    let mut a = leasehold(d, "a", &["--control", &ctl_a], &["sh", "-c", RECORDER]);
    assert!(wait_for(Duration::from_secs(10), || starts(d).len() == 1));
    let mut b = leasehold(d, "b", &["--control", &ctl_b], &["sh", "-c", RECORDER]);
    let mut c = leasehold(d, "c", &[], &["sh", "-c", RECORDER]);
    std::thread::sleep(Duration::from_millis(500)); // b and c stand by, watching

    // Refused: from a standby; to the leader itself.
    let (code, _, err) = step_down(&["--control", &ctl_b, "--to", "c"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("409") && err.contains("not leading"), "{err}");
    let (code, _, err) = step_down(&["--control", &ctl_a, "--to", "a"]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains("cannot hand over to `a`"), "{err}");

    let asked = now_nanos();
    let (code, out, err) = step_down(&["--control", &ctl_a, "--to", "c"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(
        out.starts_with("handing over: a (fencing token 0) to c"),
        "{out}"
    );
    assert!(wait_for(Duration::from_secs(5), || starts(d).len() == 2));
    let log = std::fs::read_to_string(d.join("log")).unwrap();
    assert_eq!(starts(d)[1], ("c".to_owned(), 1), "{log}");
    let took = Duration::from_nanos((started_at(&log, "c") - asked) as u64);
    eprintln!("transfer to c's command running: {took:?}");
    assert!(took < Duration::from_millis(1500), "{took:?}");
    // Nobody else, then or for a lease after.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(
        starts(d).len(),
        2,
        "{}",
        std::fs::read_to_string(d.join("log")).unwrap()
    );
    let log = std::fs::read_to_string(d.join("log")).unwrap();
    history::check(&history::parse_log(&log).unwrap()).unwrap_or_else(|e| panic!("{e}\n{log}"));
    for p in [&a, &b, &c] {
        signal(p, rustix::process::Signal::TERM);
    }
    for p in [&mut a, &mut b, &mut c] {
        assert_eq!(p.wait().unwrap().code(), Some(0));
    }
}
