//! The file backend: the conformance suite, corrupt files, and electors across one file.

use leasehold::{Elector, LockBackend, LockError, Timing, backend::file::FileLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

#[tokio::test]
async fn conformance() {
    let dir = tempfile::tempdir().unwrap();
    leasehold_testing::conformance::run_all(|name| {
        FileLock::new(dir.path().join(format!("{name}.json")))
    })
    .await;
}

#[tokio::test]
async fn a_corrupt_file_is_an_error_naming_the_path_and_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, b"{not json").unwrap();
    let lock = FileLock::new(&path);
    let err = lock.get().await.unwrap_err();
    assert!(matches!(err, LockError::Corrupt { .. }), "{err:?}");
    assert!(err.to_string().contains(&*path.to_string_lossy()), "{err}");

    // An elector on it keeps reporting the error and never writes.
    let cancel = CancellationToken::new();
    let timing = Timing {
        lease_duration: Duration::from_secs(2),
        renew_deadline: Duration::from_secs(1),
        retry_period: Duration::from_millis(200),
        release_on_cancel: true,
    };
    let elector = Elector::new(FileLock::new(&path), "a", timing).unwrap();
    let mut status = elector.handle().subscribe();
    let task = tokio::spawn(elector.run(cancel.clone()));
    tokio::time::timeout(
        Duration::from_secs(5),
        status.wait_for(|s| s.last_error.is_some()),
    )
    .await
    .unwrap()
    .unwrap();
    let err = status.borrow().last_error.clone().unwrap();
    assert_eq!(err.kind, leasehold::FailureKind::Corrupt, "{err}");
    assert!(err.object.contains("bad.json"), "{}", err.object);
    assert!(
        err.message.contains("corrupt") && err.message.contains("bad.json"),
        "{err}"
    );
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(std::fs::read(&path).unwrap(), b"{not json");
    cancel.cancel();
    task.await.unwrap();
}

#[tokio::test]
async fn a_missing_directory_is_an_error_naming_the_path() {
    let lock = FileLock::new("/nonexistent-leasehold-dir/x.json");
    let err = lock
        .create(&leasehold::LeaderRecord::default())
        .await
        .unwrap_err();
    let text = leasehold_testing_chain(&err);
    assert!(text.contains("/nonexistent-leasehold-dir"), "{text}");
}

fn leasehold_testing_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut c = e.source();
    while let Some(x) = c {
        s += &format!(": {x}");
        c = x.source();
    }
    s
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_electors_one_leader_and_fast_handover() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("lock.json");
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    };
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let mut cancels = Vec::new();
    let mut handles = Vec::new();
    let mut tasks = Vec::new();
    for i in 0..3 {
        let id = format!("c{i}");
        let tx = tx.clone();
        let cancel = CancellationToken::new();
        let elector = Elector::new(FileLock::new(&path), id.clone(), timing.clone())
            .unwrap()
            .on_started_leading(move |l| {
                let _ = tx.send((id.clone(), l.fencing_token().0, tokio::time::Instant::now()));
            });
        handles.push(elector.handle());
        tasks.push(tokio::spawn(elector.run(cancel.clone())));
        cancels.push(cancel);
    }
    let (first, token, _) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let leaders: Vec<_> = handles.iter().filter(|h| h.is_leader()).collect();
    assert_eq!(leaders.len(), 1);
    for h in &handles {
        assert_eq!(h.leader(), first, "everyone sees the same leader");
    }
    // Graceful handover: cancel the leader; another takes over within a poll or two.
    let idx: usize = first[1..].parse().unwrap();
    let t0 = tokio::time::Instant::now();
    cancels[idx].cancel();
    let (second, token2, at) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_ne!(second, first);
    assert!(
        token2 > token,
        "fencing token increases: {token} -> {token2}"
    );
    let handover = at - t0;
    assert!(
        handover < Duration::from_secs(2),
        "handover took {handover:?}, not a lease duration"
    );
    for c in &cancels {
        c.cancel();
    }
    for t in tasks {
        t.await.unwrap();
    }
}

#[tokio::test]
async fn a_lock_held_by_another_process_fails_as_unavailable_instead_of_hanging() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("held.json");
    let lock = FileLock::new(&path);
    lock.create(&leasehold::LeaderRecord::default())
        .await
        .unwrap();
    // Someone (a frozen candidate, another user) holds the flock.
    let holder = std::fs::OpenOptions::new()
        .write(true)
        .open(dir.path().join("held.json.lock"))
        .unwrap();
    rustix::fs::flock(&holder, rustix::fs::FlockOperation::LockExclusive).unwrap();
    let v = lock.get().await.unwrap().unwrap().version;
    let started = tokio::time::Instant::now();
    let err = lock
        .update(&leasehold::LeaderRecord::default(), &v)
        .await
        .unwrap_err();
    assert!(matches!(err, LockError::Unavailable { .. }), "{err:?}");
    assert!(started.elapsed() < Duration::from_secs(5));
    drop(holder);
    lock.update(&leasehold::LeaderRecord::default(), &v)
        .await
        .unwrap();
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]

    /// Arbitrary bytes in the record file: a record or `Corrupt` naming the path, never a panic,
    /// and the file is never rewritten by a failed read or a refused write.
    #[test]
    fn any_file_content_reads_cleanly_and_is_never_overwritten(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.json");
        std::fs::write(&path, &bytes).unwrap();
        let lock = FileLock::new(&path);
        match rt.block_on(lock.get()) {
            Ok(_) => {}
            Err(LockError::Corrupt { object, .. }) => {
                proptest::prop_assert!(object.contains("x.json"));
                let err = rt.block_on(lock.update(&leasehold::LeaderRecord::default(), &leasehold::Version::new("0"))).unwrap_err();
                proptest::prop_assert!(matches!(err, LockError::Corrupt { .. }), "{:?}", err);
                proptest::prop_assert_eq!(std::fs::read(&path).unwrap(), bytes);
            }
            Err(e) => proptest::prop_assert!(false, "unexpected {:?}", e),
        }
    }
}

fn holder(id: &str) -> leasehold::LeaderRecord {
    leasehold::LeaderRecord::new(id, 15)
}

/// Candidates may name one record by a symbolic link and by its target: both names are one
/// record under one lock, and writes never replace the link.
#[tokio::test]
async fn a_symlinked_record_path_and_its_target_are_one_record_and_one_lock() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("target.json");
    std::fs::create_dir(dir.path().join("sub")).unwrap();
    let link = dir.path().join("sub/link.json");
    // Relative to the link's directory, and dangling until the record is created.
    std::os::unix::fs::symlink("../target.json", &link).unwrap();
    let via_link = FileLock::new(&link);
    let via_target = FileLock::new(&target);

    let v1 = via_link.create(&holder("a")).await.unwrap();
    let got = via_target
        .get()
        .await
        .unwrap()
        .expect("the record created through the link is read through the target");
    assert_eq!(
        (got.record.holder_identity.as_str(), &got.version),
        ("a", &v1)
    );
    let err = via_target.create(&holder("b")).await.unwrap_err();
    assert!(matches!(err, LockError::Conflict { .. }), "{err:?}");

    let v2 = via_target.update(&holder("b"), &v1).await.unwrap();
    let err = via_link.update(&holder("c"), &v1).await.unwrap_err();
    assert!(
        matches!(err, LockError::Conflict { .. }),
        "stale through the link: {err:?}"
    );
    let v3 = via_link.update(&holder("c"), &v2).await.unwrap();
    let got = via_target.get().await.unwrap().unwrap();
    assert_eq!(
        (got.record.holder_identity.as_str(), &got.version),
        ("c", &v3)
    );

    assert!(
        std::fs::symlink_metadata(&link)
            .unwrap()
            .file_type()
            .is_symlink(),
        "the link is still a link"
    );
    assert!(
        !dir.path().join("sub/link.json.lock").exists(),
        "one lock file, beside the target"
    );
}

#[tokio::test]
async fn a_symlink_loop_is_an_error_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.json");
    std::os::unix::fs::symlink("b.json", &a).unwrap();
    std::os::unix::fs::symlink("a.json", dir.path().join("b.json")).unwrap();
    let lock = FileLock::new(&a);
    for err in [
        lock.get().await.unwrap_err(),
        lock.create(&holder("a")).await.unwrap_err(),
    ] {
        let text = err.to_string();
        assert!(
            matches!(err, LockError::Other { .. })
                && text.contains(&*a.to_string_lossy())
                && text.contains("symbolic link"),
            "{text}"
        );
    }
}

/// A term without a callback: `spawn` runs the elector on its own task, `acquired` waits for
/// the term, `leadership` and `watch_leadership` follow it, and a `select!` that ends early
/// drops nothing that ends the term.
#[tokio::test]
async fn a_spawned_elector_hands_out_its_terms_through_the_handle() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("spawned.json");
    let timing = Timing {
        lease_duration: Duration::from_secs(3),
        renew_deadline: Duration::from_secs(2),
        retry_period: Duration::from_millis(500),
        release_on_cancel: true,
    };
    let cancel = CancellationToken::new();
    let elector = Elector::with_config(
        FileLock::new(&path),
        leasehold::Config::new("a").timing(timing),
    )
    .unwrap();
    let (handle, task) = elector.spawn(cancel.clone());
    let mut terms = handle.watch_leadership();

    // A select! over the term and something that finishes first: the election goes on.
    tokio::select! {
        _ = handle.acquired() => {}
        () = tokio::time::sleep(Duration::ZERO) => {}
    }
    let term = tokio::time::timeout(Duration::from_secs(5), handle.acquired())
        .await
        .expect("leads within 5 s")
        .expect("the elector is running");
    assert_eq!(term.fencing_token().0, 0);
    assert!(!term.is_lost());
    assert_eq!(
        handle.leadership().map(|l| l.fencing_token()),
        Some(term.fencing_token())
    );
    assert!(terms.borrow_and_update().is_some());
    // A second call returns the current term at once.
    let again = tokio::time::timeout(Duration::from_millis(100), handle.acquired())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(again.fencing_token(), term.fencing_token());

    cancel.cancel();
    tokio::time::timeout(Duration::from_secs(2), term.lost())
        .await
        .expect("the term ends on cancel");
    task.await.unwrap();
    assert!(handle.leadership().is_none());
    terms.changed().await.unwrap();
    assert!(terms.borrow().is_none(), "the watch says the term ended");
    assert_eq!(
        handle.acquired().await.map(|l| l.fencing_token()),
        None,
        "a finished elector hands out no term"
    );
}
