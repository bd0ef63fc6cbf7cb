//! Elections on etcd v3 (feature `etcd`), held as etcd's own clients hold them.
//!
//! **Work in progress.** This module carries out the actions of the sans-IO election queue
//! ([`leasehold_core::queue`]) against etcd through the `etcd-client` crate: a session lease
//! with keepalives, one key `<name>/<lease hex>` per candidate, the queue watched on its
//! prefix. Candidates here, `etcdctl elect` and Go programs on `concurrency.Election` share one
//! election. [`Elector`](crate::Elector) runs on it like on any lock; the CLI and the fault run
//! do not yet.

use etcd_client::{
    Client, Compare, CompareOp, EventType, GetOptions, LeaseKeepAliveStream, LeaseKeeper,
    PutOptions, Txn, TxnOp, TxnOpResponse, WatchOptions,
};
use futures_util::{
    StreamExt as _,
    future::BoxFuture,
    stream::{BoxStream, FuturesUnordered},
};
use leasehold_core::{
    lock::ErrorKind,
    queue::{Action, Change, Entry, Event},
};
use std::{sync::Arc, time::Duration};
use tokio::time::{Instant, timeout_at};

#[cfg(test)]
mod tests;

/// One election on etcd: the client to reach it through, and the election's name (its keys'
/// prefix is `<name>/`).
#[derive(Clone)]
pub struct EtcdElection {
    client: Client,
    name: String,
}

// === impl EtcdElection ===

impl EtcdElection {
    /// The election `name` on the etcd that `client` reaches. The client is the application's:
    /// its endpoints, TLS and credentials are used as they are.
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client,
            name: name.into(),
        }
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }
}

impl crate::Election for EtcdElection {
    fn describe(&self) -> String {
        format!("etcd election {}", self.name)
    }
    fn carries_handover(&self) -> bool {
        // The queue can hand over to the candidate next in line only; the handle cannot tell
        // which that is yet, so a transfer is refused rather than accepted and dropped.
        false
    }
    fn engine(self: std::sync::Arc<Self>) -> crate::elector::Engine {
        crate::elector::Engine::Etcd(self)
    }
}

/// The keepalive stream of the session's lease, kept between keepalives.
type Keeper = (i64, LeaseKeeper, LeaseKeepAliveStream);

/// Carries out the queue's actions and yields their results as events.
pub(crate) struct Io {
    client: Client,
    prefix: String,
    origin: Instant,
    pending: FuturesUnordered<BoxFuture<'static, Event>>,
    keeper: Arc<std::sync::Mutex<Option<Keeper>>>,
    watch: Option<BoxStream<'static, Event>>,
}

// === impl Io ===

impl Io {
    /// An executor for `election`, with deadlines counted from `origin` (the machine's tick 0).
    pub(crate) fn new(election: &EtcdElection, origin: Instant) -> Self {
        Self {
            client: election.client.clone(),
            prefix: format!("{}/", election.name),
            origin,
            pending: FuturesUnordered::new(),
            keeper: Arc::default(),
            watch: None,
        }
    }

    /// Starts `action`'s request, or the watch; the leadership actions are not this executor's.
    pub(crate) fn execute(&mut self, action: &Action) {
        let mut c = self.client.clone();
        let origin = self.origin;
        let at = move |d: Duration| origin + d;
        let fut: BoxFuture<'static, Event> = match action.clone() {
            Action::Grant { ttl, deadline } => Box::pin(async move {
                // Whole seconds, rounded up: never a shorter lease than the timing assumes.
                let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
                let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
                let r = timeout_at(at(deadline), c.lease_grant(secs, None)).await;
                Event::Granted(flatten(r).map(|g| {
                    (
                        g.id(),
                        Duration::from_secs(u64::try_from(g.ttl()).unwrap_or(0)),
                    )
                }))
            }),
            Action::KeepAlive { lease, deadline } => {
                let keeper = Arc::clone(&self.keeper);
                Box::pin(async move {
                    // Taken out while in flight: a keepalive given up on leaves its answer in
                    // the stream, so its stream goes with it and the next one opens anew.
                    let held = keeper
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .filter(|(id, _, _)| *id == lease);
                    let r = timeout_at(at(deadline), keep_alive(&mut c, lease, held)).await;
                    Event::KeptAlive(match r {
                        Ok(Ok((ttl, k))) => {
                            *keeper
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(k);
                            Ok(ttl)
                        }
                        // Opening a stream for a lease etcd no longer has fails so.
                        Ok(Err(e)) if lease_not_found(&e) => Ok(None),
                        Ok(Err(e)) => Err(kind(e)),
                        Err(_) => Err(ErrorKind::Timeout),
                    })
                })
            }
            Action::Campaign {
                key,
                value,
                lease,
                deadline,
            } => Box::pin(async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(key.clone(), CompareOp::Equal, 0)])
                    .and_then([TxnOp::put(
                        key.clone(),
                        value,
                        Some(PutOptions::new().with_lease(lease)),
                    )])
                    .or_else([TxnOp::get(key, None)]);
                let r = timeout_at(at(deadline), c.txn(txn)).await;
                if let Ok(Err(e)) = &r
                    && lease_not_found(e)
                {
                    return Event::LeaseGone;
                }
                Event::Campaigned(flatten(r).and_then(|resp| {
                    if resp.succeeded() {
                        return resp.header().map(|h| h.revision()).ok_or(ErrorKind::Failed);
                    }
                    // The key was there already (a campaign that landed before its answer was
                    // lost): its create revision.
                    resp.op_responses()
                        .into_iter()
                        .find_map(|op| match op {
                            TxnOpResponse::Get(g) => {
                                g.kvs().first().map(etcd_client::KeyValue::create_revision)
                            }
                            _ => None,
                        })
                        .ok_or(ErrorKind::Failed)
                }))
            }),
            Action::List { deadline } => {
                let prefix = self.prefix.clone();
                Box::pin(async move {
                    let r = timeout_at(
                        at(deadline),
                        c.get(prefix, Some(GetOptions::new().with_prefix())),
                    )
                    .await;
                    Event::Listed(flatten(r).and_then(|resp| {
                        let revision = resp
                            .header()
                            .map(|h| h.revision())
                            .ok_or(ErrorKind::Failed)?;
                        Ok((resp.kvs().iter().map(entry).collect(), revision))
                    }))
                })
            }
            Action::Watch { revision } => {
                self.watch = Some(watch(self.client.clone(), self.prefix.clone(), revision));
                return;
            }
            Action::Unwatch => {
                self.watch = None;
                return;
            }
            Action::Resign {
                key,
                create_revision,
                deadline,
            } => Box::pin(async move {
                let txn = Txn::new()
                    .when([Compare::create_revision(
                        key.clone(),
                        CompareOp::Equal,
                        create_revision,
                    )])
                    .and_then([TxnOp::delete(key, None)]);
                let r = timeout_at(at(deadline), c.txn(txn)).await;
                // Not succeeded: the key is not that one any more (gone, or queued anew).
                Event::Resigned(flatten(r).map(|_| ()))
            }),
            Action::Revoke { lease, deadline } => Box::pin(async move {
                let r = timeout_at(at(deadline), c.lease_revoke(lease)).await;
                Event::Revoked(match r {
                    Ok(Ok(_)) => Ok(()),
                    // Gone already, which is what was asked.
                    Ok(Err(e)) if lease_not_found(&e) => Ok(()),
                    Ok(Err(e)) => Err(kind(e)),
                    Err(_) => Err(ErrorKind::Timeout),
                })
            }),
            Action::RevokeStale { lease, deadline } => {
                // Best effort, on its own: nothing waits for it.
                tokio::spawn(async move {
                    let _ = timeout_at(at(deadline), c.lease_revoke(lease)).await;
                });
                return;
            }
            _ => return,
        };
        self.pending.push(fut);
    }

    /// The next result or watch event; pending forever if there is nothing to wait for.
    pub(crate) async fn next(&mut self) -> Event {
        loop {
            tokio::select! {
                Some(ev) = self.pending.next(), if !self.pending.is_empty() => return ev,
                ev = async { self.watch.as_mut().expect("guarded").next().await }, if self.watch.is_some() => {
                    match ev {
                        Some(ev) => return ev,
                        // Ended after reporting its loss.
                        None => self.watch = None,
                    }
                }
                else => std::future::pending::<()>().await,
            }
        }
    }
}

/// One keepalive on `held`'s stream, or on a new one. Answers the TTL (`None`: the lease is
/// gone) and the stream to keep.
async fn keep_alive(
    c: &mut Client,
    lease: i64,
    held: Option<Keeper>,
) -> Result<(Option<Duration>, Keeper), etcd_client::Error> {
    let (_, mut keeper, mut stream) = match held {
        Some(k) => k,
        None => {
            // Opening the stream sends a keepalive and reads its answer (an error if the lease
            // is gone); the one below is the one counted, sent now.
            let (k, s) = c.lease_keep_alive(lease).await?;
            (lease, k, s)
        }
    };
    keeper.keep_alive().await?;
    let Some(answer) = stream.message().await? else {
        return Err(etcd_client::Error::LeaseKeepAliveError(
            "the keepalive stream ended".into(),
        ));
    };
    let ttl = u64::try_from(answer.ttl())
        .ok()
        .filter(|t| *t > 0)
        .map(Duration::from_secs);
    Ok((ttl, (lease, keeper, stream)))
}

/// The watch on the prefix from `revision`, as events: changes, then `WatchLost` when it ends
/// (compacted past, cancelled, or broken).
fn watch(client: Client, prefix: String, revision: i64) -> BoxStream<'static, Event> {
    enum S {
        // `Client` is several KiB: boxed, so the open stream's state stays small.
        Opening(Box<Client>, String, i64),
        Open(etcd_client::WatchStream),
        Done,
    }
    futures_util::stream::unfold(
        S::Opening(Box::new(client), prefix, revision),
        |s| async move {
            let mut stream = match s {
                S::Opening(mut c, prefix, revision) => {
                    let opts = WatchOptions::new()
                        .with_prefix()
                        .with_start_revision(revision);
                    // Bounded: an open that hangs (a black-holed connection) is a lost watch.
                    match tokio::time::timeout(WATCH_OPEN_TIMEOUT, c.watch(prefix, Some(opts)))
                        .await
                    {
                        Ok(Ok(w)) => w,
                        _ => return Some((Event::WatchLost, S::Done)),
                    }
                }
                S::Open(w) => w,
                S::Done => return None,
            };
            loop {
                match stream.message().await {
                    Ok(Some(resp)) if resp.canceled() || resp.compact_revision() > 0 => {
                        return Some((Event::WatchLost, S::Done));
                    }
                    Ok(Some(resp)) => {
                        let changes: Vec<Change> = resp
                            .events()
                            .iter()
                            .filter_map(|e| {
                                let kv = e.kv()?;
                                Some(match e.event_type() {
                                    EventType::Put => Change::Put(entry(kv)),
                                    EventType::Delete => Change::Delete {
                                        key: String::from_utf8_lossy(kv.key()).into_owned(),
                                    },
                                })
                            })
                            .collect();
                        if !changes.is_empty() {
                            return Some((Event::Changed(changes), S::Open(stream)));
                        }
                    }
                    Ok(None) | Err(_) => return Some((Event::WatchLost, S::Done)),
                }
            }
        },
    )
    .boxed()
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        create_revision: kv.create_revision(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        lease: kv.lease(),
    }
}

fn kind(_: etcd_client::Error) -> ErrorKind {
    ErrorKind::Failed
}

/// Whether etcd said the lease does not exist ("etcdserver: requested lease not found", or
/// etcd-client's own "lease not found" for a keepalive answered with TTL 0).
fn lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

/// How long opening a watch may take.
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(5);

fn flatten<T>(
    r: Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>,
) -> Result<T, ErrorKind> {
    match r {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(kind(e)),
        Err(_) => Err(ErrorKind::Timeout),
    }
}
