//! `fence::Fence` on the real API server: a deposed leader that still believes it leads (its
//! term is on, in its own elector) cannot undo a later term's write, even with a stale copy of
//! the object; a corrupt token is reported, not overwritten; nothing is sent after the term.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, api::PostParams};
use leasehold::{
    Elector, LeaderRecord, Leadership, Timing,
    fence::{Error, Fence, TOKEN_ANNOTATION},
};
use leasehold_testing::{
    harness::{self, unique},
    mem::MemLock,
};
use std::collections::BTreeMap;
use tokio_util::sync::CancellationToken;

/// A term led on its own in-memory lock, whose record says `transitions` terms came before.
async fn term(id: &str, transitions: i32) -> (Leadership, CancellationToken) {
    let lock = MemLock::new();
    if transitions > 0 {
        // Released by an earlier holder: taken at once, with the next token.
        lock.put(LeaderRecord::new("", 15).with_leader_transitions(transitions));
    }
    let cancel = CancellationToken::new();
    let elector = Elector::new(lock, id, Timing::default()).unwrap();
    let (handle, _task) = elector.spawn(cancel.clone());
    let term = handle.acquired().await.expect("a term");
    (term, cancel)
}

fn config_map(name: &str, value: &str) -> ConfigMap {
    let mut cm = ConfigMap::default();
    cm.metadata.name = Some(name.into());
    cm.data = Some(BTreeMap::from([("value".into(), value.into())]));
    cm
}

fn token_of(cm: &ConfigMap) -> Option<&str> {
    cm.metadata
        .annotations
        .as_ref()?
        .get(TOKEN_ANNOTATION)
        .map(String::as_str)
}

fn value_of(cm: &ConfigMap) -> &str {
    &cm.data.as_ref().unwrap()["value"]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deposed_leader_cannot_undo_a_later_terms_write() {
    let server = harness::shared().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client("admin").await, "default");
    let name = unique("fenced");
    let (old, _c1) = term("old", 0).await;
    let (new, _c2) = term("new", 4).await;
    assert!(old.fencing_token() < new.fencing_token());
    let (old, new) = (Fence::new(&old), Fence::new(&new));

    // The old term creates the object, and keeps its copy.
    let stale = old
        .replace(&api, None, config_map(&name, "old-1"))
        .await
        .unwrap();
    assert_eq!(token_of(&stale), Some("0"));
    // The new term overwrites it, from no copy at all (a create that finds it exists).
    let stored = new
        .replace(&api, None, config_map(&name, "new-1"))
        .await
        .unwrap();
    assert_eq!(token_of(&stored), Some(new.token().0.to_string().as_str()));

    // The deposed leader writes from its stale copy: the precondition fails, it reads again,
    // finds the newer token and refuses.
    let err = old
        .replace(&api, Some(&stale), config_map(&name, "old-2"))
        .await
        .unwrap_err();
    println!("deposed leader's write: {err}");
    assert!(
        matches!(err, Error::Superseded { ours, theirs, .. } if ours == old.token() && theirs == new.token()),
        "{err:?}"
    );
    // And from a fresh read, and as a delete.
    let err = old
        .replace(&api, None, config_map(&name, "old-3"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Superseded { .. }), "{err:?}");
    let err = old.delete(&api, &name).await.unwrap_err();
    assert!(matches!(err, Error::Superseded { .. }), "{err:?}");
    assert_eq!(value_of(&api.get(&name).await.unwrap()), "new-1");

    // The new term keeps writing, from its copy or not, and may delete.
    let stored = new
        .replace(&api, Some(&stored), config_map(&name, "new-2"))
        .await
        .unwrap();
    assert_eq!(value_of(&stored), "new-2");
    new.delete(&api, &name).await.unwrap();
    assert!(api.get_opt(&name).await.unwrap().is_none());
    new.delete(&api, &name).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_that_is_not_a_number_is_reported_and_not_overwritten() {
    let server = harness::shared().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client("admin").await, "default");
    let name = unique("corrupt");
    let mut cm = config_map(&name, "by-hand");
    cm.metadata.annotations = Some(BTreeMap::from([(TOKEN_ANNOTATION.into(), "seven".into())]));
    api.create(&PostParams::default(), &cm).await.unwrap();

    let (term, _c) = term("leader", 0).await;
    let err = Fence::new(&term)
        .replace(&api, None, config_map(&name, "leader"))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(
        matches!(&err, Error::CorruptToken { value, .. } if value == "seven"),
        "{err:?}"
    );
    assert!(
        err.to_string().contains(&format!("ConfigMap \"{name}\"")),
        "{err}"
    );
    assert_eq!(value_of(&api.get(&name).await.unwrap()), "by-hand");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_is_sent_once_the_term_has_ended() {
    let server = harness::shared().await;
    let api: Api<ConfigMap> = Api::namespaced(server.client("admin").await, "default");
    let name = unique("ended");
    let (term, cancel) = term("leader", 0).await;
    let fence = Fence::new(&term);
    cancel.cancel();
    term.lost().await;
    let err = fence
        .replace(&api, None, config_map(&name, "late"))
        .await
        .unwrap_err();
    println!("{err}");
    assert!(matches!(err, Error::TermEnded { .. }), "{err:?}");
    assert!(api.get_opt(&name).await.unwrap().is_none());
}
