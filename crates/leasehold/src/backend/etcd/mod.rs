//! Elections on etcd v3 (feature `etcd`), held as etcd's own clients hold them.
//!
//! This module carries out the actions of the sans-IO election queue
//! ([`leasehold_core::queue`]) against etcd through the `etcd-client` crate: a session lease
//! with keepalives, one key `<name>/<lease hex>` per candidate, the queue watched on its
//! prefix. Candidates here, `etcdctl elect` and Go programs on `concurrency.Election` share one
//! election. [`Elector`](crate::Elector) runs on it like on any lock.
//!
//! The client is the application's: leasehold turns on none of `etcd-client`'s TLS features.
//! [`etcd_client`] is re-exported so that the client the application builds is of the version
//! this module takes.
//!
//! ```no_run
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! use leasehold::backend::etcd::{EtcdElection, etcd_client};
//! let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
//! let election = EtcdElection::new(client, "my-app");
//! // Who is in line, leader first: a status page, or a check before contending.
//! for c in election.candidates().await? {
//!     println!("{} (revision {})", c.value, c.create_revision);
//! }
//! let elector = leasehold::Elector::new(election, "me", leasehold::Timing::default())?;
//! # Ok(()) }
//! ```

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

pub use etcd_client;
pub(crate) use session::Claim;
pub use session::EtcdSession;
pub use set::{ElectionSet, SetEvent};

mod session;
mod set;
#[cfg(test)]
mod tests;

/// Why a request to etcd failed, sorted by what the operator does about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// No endpoint answered: down, unreachable, or the connection failed below gRPC (a TLS
    /// handshake too, which the message names).
    #[error("cannot reach etcd: {0}")]
    Unreachable(String),
    /// The TLS handshake failed: a plain endpoint for a TLS server or the other way round, a
    /// server certificate the CA does not sign, a client certificate the server refuses.
    #[error(
        "TLS with etcd failed (check the endpoints' scheme, the CA, and the client certificate): {0}"
    )]
    Tls(String),
    /// etcd refused the user name or password.
    #[error("etcd refused the credentials: {0}")]
    Unauthenticated(String),
    /// The user may not read or write the election's keys: its role needs read and write on
    /// the prefix.
    #[error(
        "etcd denied access to the keys under `{prefix}` (the user's role needs readwrite on that prefix): {message}"
    )]
    PermissionDenied {
        /// The election's prefix.
        prefix: String,
        /// etcd's message.
        message: String,
    },
    /// The request did not finish in time.
    #[error("etcd did not answer within {0:?}")]
    Timeout(Duration),
    /// Anything else etcd or the client said.
    #[error("etcd request failed: {0}")]
    Other(String),
}

// === impl Error ===

impl Error {
    /// Sorts `e`, a failure of a request on the election `prefix`.
    pub fn classify(e: &etcd_client::Error, prefix: &str) -> Self {
        use etcd_client::Error as E;
        let message = describe(e);
        let lower = message.to_ascii_lowercase();
        if [
            "tls",
            "certificate",
            "handshake",
            "invalidcontenttype",
            "corrupt message",
        ]
        .iter()
        .any(|w| lower.contains(w))
        {
            return Self::Tls(message);
        }
        match e {
            E::GRpcStatus(s) => match s.code() {
                tonic_code::Unavailable | tonic_code::Unknown
                    if !message.contains("etcdserver:") =>
                {
                    Self::Unreachable(message)
                }
                tonic_code::Unauthenticated => Self::Unauthenticated(message),
                tonic_code::InvalidArgument if message.contains("authentication failed") => {
                    Self::Unauthenticated(message)
                }
                tonic_code::PermissionDenied => Self::PermissionDenied {
                    prefix: prefix.to_owned(),
                    message,
                },
                tonic_code::DeadlineExceeded => Self::Unreachable(message),
                _ => Self::Other(message),
            },
            E::TransportError(_) | E::IoError(_) => Self::Unreachable(message),
            _ => Self::Other(message),
        }
    }
}

use tonic::Code as tonic_code;

/// `e` with the chain of causes the client keeps (its own `Display` shows only the top).
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::TransportError(t) => crate::display_chain(t),
        etcd_client::Error::GRpcStatus(s) => {
            // The cause's chain usually repeats the message: then the chain alone.
            let chain = std::error::Error::source(s).map(crate::display_chain);
            match chain {
                Some(c) if c.contains(s.message()) => format!("{:?}: {c}", s.code()),
                Some(c) => format!("{:?}: {}: {c}", s.code(), s.message()),
                None => format!("{:?}: {}", s.code(), s.message()),
            }
        }
        other => other.to_string(),
    }
}

/// A key in the election's queue, in the order etcd gives leadership: the first leads.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Candidate {
    /// The whole key: `<name>/<lease hex>` for candidates of leasehold and etcd's own clients.
    pub key: String,
    /// The candidate's value: leasehold writes its identity, `etcdctl elect` its proposal.
    pub value: String,
    /// The key's create revision: its place in line, and the fencing token of its term.
    pub create_revision: i64,
    /// The session lease that keeps the key; 0 for none (a stray key, which no candidate will
    /// ever delete, and which holds up everyone queued after it).
    pub lease: i64,
}

/// One election on etcd: the client to reach it through, and the election's name (its keys'
/// prefix is `<name>/`).
#[derive(Clone)]
pub struct EtcdElection {
    /// Shared: a `Client` is several KiB, and a process may hold many elections.
    client: Arc<Client>,
    name: String,
    /// The session shared with other elections, if made by [`EtcdSession::election`]; else
    /// each elector on it holds a session of its own.
    session: Option<EtcdSession>,
}

// === impl EtcdElection ===

impl EtcdElection {
    /// The election `name` on the etcd that `client` reaches. The client is the application's:
    /// its endpoints, TLS and credentials are used as they are.
    ///
    /// Each elector on it keeps a session (lease) of its own. A process in many elections
    /// shares one instead: [`EtcdSession::election`].
    pub fn new(client: Client, name: impl Into<String>) -> Self {
        Self {
            client: Arc::new(client),
            name: name.into(),
            session: None,
        }
    }

    /// On a shared session: this election's place on it, for one elector (`Some(None)`: not
    /// on a shared session; `None`: taken by another elector of this process).
    pub(crate) fn claim(&self) -> Option<Option<Claim>> {
        match &self.session {
            Some(s) => s.claim(&self.name).map(Some),
            None => Some(None),
        }
    }

    /// The session it shares with other elections, if any.
    pub fn session(&self) -> Option<&EtcdSession> {
        self.session.as_ref()
    }

    /// The election's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The election's queue as etcd holds it now, the leader first: one read of the prefix.
    /// Also a check that the client can reach etcd and read the election's keys.
    ///
    /// # Errors
    /// [`Error`]: unreachable, refused credentials, denied access; at most 10 seconds.
    pub async fn candidates(&self) -> Result<Vec<Candidate>, Error> {
        const LIMIT: Duration = Duration::from_secs(10);
        let prefix = format!("{}/", self.name);
        let mut c = self.client.kv_client();
        let r = tokio::time::timeout(
            LIMIT,
            c.get(prefix.as_str(), Some(GetOptions::new().with_prefix())),
        )
        .await
        .map_err(|_| Error::Timeout(LIMIT))?
        .map_err(|e| Error::classify(&e, &prefix))?;
        let mut all: Vec<Candidate> = r
            .kvs()
            .iter()
            .map(|kv| Candidate {
                key: String::from_utf8_lossy(kv.key()).into_owned(),
                value: String::from_utf8_lossy(kv.value()).into_owned(),
                create_revision: kv.create_revision(),
                lease: kv.lease(),
            })
            .collect();
        all.sort_by_key(|c| c.create_revision);
        Ok(all)
    }

    /// The seconds left on each candidate's lease (`None`: no lease, gone, or no answer within
    /// 2 seconds), for a status page.
    pub async fn lease_ttls(&self, candidates: &[Candidate]) -> Vec<Option<i64>> {
        let mut out = Vec::with_capacity(candidates.len());
        for c in candidates {
            let mut client = self.client.lease_client();
            let ttl = match c.lease {
                0 => None,
                id => tokio::time::timeout(Duration::from_secs(2), client.time_to_live(id, None))
                    .await
                    .ok()
                    .and_then(Result::ok)
                    .map(|r| r.ttl())
                    .filter(|t| *t >= 0),
            };
            out.push(ttl);
        }
        out
    }
}

impl crate::Election for EtcdElection {
    fn describe(&self) -> String {
        format!("etcd election {}", self.name)
    }
    fn carries_handover(&self) -> bool {
        true
    }
    fn hands_over_to_next_in_line_only(&self) -> bool {
        // Leadership passes in the order candidates queued: resigning hands it to the next.
        true
    }
    fn engine(self: std::sync::Arc<Self>) -> crate::elector::Engine {
        crate::elector::Engine::Etcd(self)
    }
}

/// The keepalive stream of the session's lease, kept between keepalives.
type Keeper = (i64, LeaseKeeper, LeaseKeepAliveStream);

/// Carries out the queue's actions and yields their results as events.
pub(crate) struct Io {
    requests: Requests,
    pending: FuturesUnordered<BoxFuture<'static, Event>>,
    watch: Option<BoxStream<'static, Event>>,
    /// The shared session whose watch stream carries this election's watch, if any, and the
    /// watch's id on it.
    session: Option<(EtcdSession, Option<i64>)>,
}

/// What a request needs, cheap to clone: a request waiting for its turn on a shared session
/// holds this, and makes its (larger) future only when it goes.
#[derive(Clone)]
struct Requests {
    client: Arc<Client>,
    prefix: String,
    origin: Instant,
    /// Boxed: most elections never hold one (on a shared session, the session keeps the lease).
    keeper: Arc<std::sync::Mutex<Option<Box<Keeper>>>>,
    report: Arc<Report>,
}

impl Drop for Io {
    fn drop(&mut self) {
        self.unwatch();
    }
}

/// Logs failed requests, each different failure once until a request succeeds: the queue
/// sees only their kind, the operator needs their words (wrong password, no route, bad
/// certificate). Elections on one shared session share what was said last, so that etcd going
/// away is one warning, not one per election.
struct Report {
    prefix: String,
    last: Arc<std::sync::Mutex<Option<String>>>,
}

// === impl Report ===

impl Report {
    fn failed(&self, e: &etcd_client::Error) -> ErrorKind {
        let error = Error::classify(e, &self.prefix);
        let msg = error.to_string();
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.as_deref() != Some(msg.as_str()) {
            tracing::warn!(election = %self.prefix.trim_end_matches('/'), error = %msg, "etcd request failed");
            *last = Some(msg);
        }
        ErrorKind::Failed
    }

    fn ok(&self) {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.take().is_some() {
            tracing::info!(election = %self.prefix.trim_end_matches('/'), "etcd answers again");
        }
    }

    fn flatten<T>(
        &self,
        r: Result<Result<T, etcd_client::Error>, tokio::time::error::Elapsed>,
    ) -> Result<T, ErrorKind> {
        match r {
            Ok(Ok(v)) => {
                self.ok();
                Ok(v)
            }
            Ok(Err(e)) => Err(self.failed(&e)),
            Err(_) => Err(ErrorKind::Timeout),
        }
    }
}

// === impl Io ===

impl Io {
    /// An executor for `election`, with deadlines counted from `origin` (the machine's tick 0).
    pub(crate) fn new(election: &EtcdElection, origin: Instant) -> Self {
        let mut io = Self::with_label(Arc::clone(&election.client), &election.name, origin);
        if let Some(session) = &election.session {
            io.requests.report = Arc::new(Report {
                prefix: io.requests.prefix.clone(),
                last: session.last_failure(),
            });
            io.session = Some((session.clone(), None));
        }
        io
    }

    /// An executor for a shared session's lease requests.
    pub(crate) fn for_session(client: Arc<Client>, origin: Instant) -> Self {
        Self::with_label(client, "(shared session)", origin)
    }

    fn with_label(client: Arc<Client>, name: &str, origin: Instant) -> Self {
        Self {
            requests: Requests {
                client,
                prefix: format!("{name}/"),
                origin,
                keeper: Arc::default(),
                report: Arc::new(Report {
                    prefix: format!("{name}/"),
                    last: Arc::default(),
                }),
            },
            pending: FuturesUnordered::new(),
            watch: None,
            session: None,
        }
    }

    /// Starts `action`'s request, or the watch; the leadership actions are not this executor's.
    pub(crate) fn execute(&mut self, action: &Action) {
        match action {
            Action::Watch { revision } => {
                self.unwatch();
                let prefix = self.requests.prefix.clone();
                self.watch = Some(match &mut self.session {
                    Some((session, id)) => {
                        let (new, events) = session.watch(prefix, *revision);
                        *id = Some(new);
                        events
                    }
                    None => watch(self.requests.client.watch_client(), prefix, *revision),
                });
                return;
            }
            Action::Unwatch => {
                self.unwatch();
                self.watch = None;
                return;
            }
            _ => {}
        }
        let fut = match (&self.session, action) {
            // On a shared session, thousands of elections may ask at once (at start, or when
            // the lease is replaced): a bounded number of requests go at a time, and the rest
            // wait small, within their deadlines.
            (
                Some((session, _)),
                Action::Campaign { deadline, .. }
                | Action::List { deadline }
                | Action::Resign { deadline, .. },
            ) => {
                let permits = session.permits();
                let (requests, action) = (self.requests.clone(), action.clone());
                let until = self.requests.origin + *deadline;
                Box::pin(async move {
                    let Ok(Ok(_turn)) = timeout_at(until, permits.acquire_owned()).await else {
                        return timed_out(&action);
                    };
                    match requests.make(action) {
                        Some(request) => request.await,
                        None => std::future::pending().await,
                    }
                })
            }
            _ => match self.requests.make(action.clone()) {
                Some(request) => request,
                None => return,
            },
        };
        self.pending.push(fut);
    }

    /// Cancels this election's watch on the shared stream, if it has one there.
    fn unwatch(&mut self) {
        if let Some((session, id)) = &mut self.session
            && let Some(id) = id.take()
        {
            session.unwatch(id);
        }
    }
}

/// The answer of a request that could not be sent before its deadline.
fn timed_out(action: &Action) -> Event {
    let e = ErrorKind::Timeout;
    match action {
        Action::Grant { .. } => Event::Granted(Err(e)),
        Action::KeepAlive { .. } => Event::KeptAlive(Err(e)),
        Action::Campaign { .. } => Event::Campaigned(Err(e)),
        Action::List { .. } => Event::Listed(Err(e)),
        Action::Resign { .. } => Event::Resigned(Err(e)),
        _ => Event::Revoked(Err(e)),
    }
}

// === impl Requests ===

impl Requests {
    /// The request for `action`, if it is one whose answer the queue waits for.
    fn make(&self, action: Action) -> Option<BoxFuture<'static, Event>> {
        // Each request takes only the service client it calls (a few hundred bytes, where a
        // whole `Client` is several KiB): thousands of elections start at once.
        let (kv, lease) = (|| self.client.kv_client(), || self.client.lease_client());
        let report = Arc::clone(&self.report);
        let origin = self.origin;
        let at = move |d: Duration| origin + d;
        Some(match action {
            Action::Grant { ttl, deadline } => {
                let mut c = lease();
                Box::pin(async move {
                    // Whole seconds, rounded up: never a shorter lease than the timing assumes.
                    let secs = ttl.as_secs() + u64::from(ttl.subsec_nanos() > 0);
                    let secs = i64::try_from(secs.max(1)).unwrap_or(i64::MAX);
                    let r = timeout_at(at(deadline), c.grant(secs, None)).await;
                    Event::Granted(report.flatten(r).map(|g| {
                        (
                            g.id(),
                            Duration::from_secs(u64::try_from(g.ttl()).unwrap_or(0)),
                        )
                    }))
                })
            }
            Action::KeepAlive {
                lease: id,
                deadline,
            } => {
                let mut c = lease();
                let lease = id;
                let keeper = Arc::clone(&self.keeper);
                Box::pin(async move {
                    // Taken out while in flight: a keepalive given up on leaves its answer in
                    // the stream, so its stream goes with it and the next one opens anew.
                    let held = keeper
                        .lock()
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .take()
                        .filter(|k| k.0 == lease);
                    let r = timeout_at(at(deadline), keep_alive(&mut c, lease, held)).await;
                    Event::KeptAlive(match r {
                        Ok(Ok((ttl, k))) => {
                            report.ok();
                            *keeper
                                .lock()
                                .unwrap_or_else(std::sync::PoisonError::into_inner) =
                                Some(k.into());
                            Ok(ttl)
                        }
                        // Opening a stream for a lease etcd no longer has fails so.
                        Ok(Err(e)) if lease_not_found(&e) => Ok(None),
                        Ok(Err(e)) => Err(report.failed(&e)),
                        Err(_) => Err(ErrorKind::Timeout),
                    })
                })
            }
            Action::Campaign {
                key,
                value,
                lease,
                deadline,
            } => {
                let mut c = kv();
                Box::pin(async move {
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
                    Event::Campaigned(report.flatten(r).and_then(|resp| {
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
                })
            }
            Action::List { deadline } => {
                let mut c = kv();
                let prefix = self.prefix.clone();
                Box::pin(async move {
                    let r = timeout_at(
                        at(deadline),
                        c.get(prefix, Some(GetOptions::new().with_prefix())),
                    )
                    .await;
                    Event::Listed(report.flatten(r).and_then(|resp| {
                        let revision = resp
                            .header()
                            .map(|h| h.revision())
                            .ok_or(ErrorKind::Failed)?;
                        Ok((resp.kvs().iter().map(entry).collect(), revision))
                    }))
                })
            }
            Action::Resign {
                key,
                create_revision,
                deadline,
            } => {
                let mut c = kv();
                Box::pin(async move {
                    let txn = Txn::new()
                        .when([Compare::create_revision(
                            key.clone(),
                            CompareOp::Equal,
                            create_revision,
                        )])
                        .and_then([TxnOp::delete(key, None)]);
                    let r = timeout_at(at(deadline), c.txn(txn)).await;
                    // Not succeeded: the key is not that one any more (gone, or queued anew).
                    Event::Resigned(report.flatten(r).map(|_| ()))
                })
            }
            Action::Revoke {
                lease: id,
                deadline,
            } => {
                let mut c = lease();
                Box::pin(async move {
                    let r = timeout_at(at(deadline), c.revoke(id)).await;
                    Event::Revoked(match r {
                        Ok(Ok(_)) => Ok(()),
                        // Gone already, which is what was asked.
                        Ok(Err(e)) if lease_not_found(&e) => Ok(()),
                        Ok(Err(e)) => Err(report.failed(&e)),
                        Err(_) => Err(ErrorKind::Timeout),
                    })
                })
            }
            Action::RevokeStale {
                lease: id,
                deadline,
            } => {
                let mut c = lease();
                // Best effort, on its own: nothing waits for it.
                tokio::spawn(async move {
                    let _ = timeout_at(at(deadline), c.revoke(id)).await;
                });
                return None;
            }
            _ => return None,
        })
    }
}

impl Io {
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
    c: &mut etcd_client::LeaseClient,
    lease: i64,
    held: Option<Box<Keeper>>,
) -> Result<(Option<Duration>, Keeper), etcd_client::Error> {
    let (_, mut keeper, mut stream) = match held {
        Some(k) => *k,
        None => {
            // Opening the stream sends a keepalive and reads its answer (an error if the lease
            // is gone); the one below is the one counted, sent now.
            let (k, s) = c.keep_alive(lease).await?;
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
fn watch(
    client: etcd_client::WatchClient,
    prefix: String,
    revision: i64,
) -> BoxStream<'static, Event> {
    enum S {
        Opening(etcd_client::WatchClient, String, i64),
        Open(etcd_client::WatchStream),
        Done,
    }
    futures_util::stream::unfold(S::Opening(client, prefix, revision), |s| async move {
        let mut stream = match s {
            S::Opening(mut c, prefix, revision) => {
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision);
                // Bounded: an open that hangs (a black-holed connection) is a lost watch.
                match tokio::time::timeout(WATCH_OPEN_TIMEOUT, c.watch(prefix, Some(opts))).await {
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
                    let changes = changes(&resp);
                    if !changes.is_empty() {
                        return Some((Event::Changed(changes), S::Open(stream)));
                    }
                }
                Ok(None) | Err(_) => return Some((Event::WatchLost, S::Done)),
            }
        }
    })
    .boxed()
}

/// The changes a watch answer carries, in etcd's order.
fn changes(resp: &etcd_client::WatchResponse) -> Vec<Change> {
    resp.events()
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
        .collect()
}

fn entry(kv: &etcd_client::KeyValue) -> Entry {
    Entry {
        key: String::from_utf8_lossy(kv.key()).into_owned(),
        create_revision: kv.create_revision(),
        value: String::from_utf8_lossy(kv.value()).into_owned(),
        lease: kv.lease(),
    }
}

/// Whether etcd said the lease does not exist ("etcdserver: requested lease not found", or
/// etcd-client's own "lease not found" for a keepalive answered with TTL 0).
fn lease_not_found(e: &etcd_client::Error) -> bool {
    e.to_string().contains("lease not found")
}

/// How long opening a watch may take.
const WATCH_OPEN_TIMEOUT: Duration = Duration::from_secs(5);
