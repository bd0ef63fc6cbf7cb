//! One session for many elections: one lease, one keepalive stream, one watch stream.
//!
//! A process that leads many elections (one per shard, per tenant) would otherwise hold one
//! lease per election and send one keepalive per election and interval, and open one gRPC
//! watch stream per election. On an [`EtcdSession`] it holds one lease, sends one keepalive
//! per interval whatever the number of elections, and watches every election's prefix over one
//! multiplexed stream, as Go's `concurrency` package does with one `Session`.
//!
//! Safety is unchanged: each election's leader acts only until the renew deadline after the
//! send time of the session's last answered keepalive ([`leasehold_core::session`]).

use super::{Client, Io};
use etcd_client::{WatchOptions, WatchRequestSender, WatchResponseStream};
use futures_util::{StreamExt as _, stream::BoxStream};
use leasehold_core::{
    Timing,
    queue::{self, Change, Event},
    session::{self, Session},
};
use std::{
    collections::{HashMap, VecDeque},
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicI64, Ordering},
    },
    time::Duration,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

/// One etcd session (lease) shared by any number of elections in this process.
///
/// Make elections on it with [`election`](Self::election) and run an
/// [`Elector`](crate::Elector) on each. The lease is granted when the session is made, kept
/// alive every [`Timing::renew_interval`], replaced if etcd loses it (every leader on it steps
/// down first), and revoked once the session and every election on it are dropped.
///
/// Every election on a session keeps its leader within the renew deadline of the session's
/// last answered keepalive: give the electors the session's [`Timing`], or one whose renew
/// deadline is longer than the session's keepalive interval.
///
/// ```no_run
/// # async fn f() -> Result<(), Box<dyn std::error::Error>> {
/// use leasehold::backend::etcd::{EtcdSession, etcd_client};
/// use leasehold::{Elector, Timing};
/// use tokio_util::sync::CancellationToken;
///
/// let client = etcd_client::Client::connect(["http://127.0.0.1:2379"], None).await?;
/// let timing = Timing::default();
/// let session = EtcdSession::new(client, timing.clone());
/// let cancel = CancellationToken::new();
/// for shard in 0..64 {
///     let election = session.election(format!("my-app/shard-{shard}"));
///     let elector = Elector::new(election, "me", timing.clone())?;
///     tokio::spawn(elector.run(cancel.clone()));
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct EtcdSession {
    inner: Arc<Inner>,
}

struct Inner {
    client: Arc<Client>,
    /// Tick 0 of the session's machine, and of every election's on it.
    origin: Instant,
    lease: watch::Receiver<Lease>,
    watches: mpsc::UnboundedSender<Cmd>,
    next_watch: AtomicI64,
    /// The elections that have an elector or a set on this session.
    claimed: Mutex<Claimed>,
    /// The elections' last failure, logged once for all of them.
    last_failure: Arc<Mutex<Option<String>>>,
    /// Turns for the elections' requests: a bounded number in flight at a time.
    permits: Arc<tokio::sync::Semaphore>,
    /// Cancelled when the last handle goes: the keeper revokes the lease.
    closed: CancellationToken,
}

/// Who runs which election on a session: two candidates there would share one key.
#[derive(Default)]
struct Claimed {
    /// Elections with an [`Elector`](crate::Elector).
    names: std::collections::HashSet<String>,
    /// Elections in an [`ElectionSet`](super::ElectionSet), by [`hash`]. Two names with one
    /// hash (about one chance in 10^14 among 100,000 names) refuse the second: never two leaders.
    sets: std::collections::HashSet<u64>,
}

/// A name's hash, stable within the process.
pub(crate) fn hash(name: &str) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(name)
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.closed.cancel();
    }
}

/// The session's lease as the keeper last saw it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Lease {
    /// The lease; 0 before the first grant.
    pub(crate) id: i64,
    /// Whether it is alive (else: lost, with every key on it).
    pub(crate) alive: bool,
    /// The TTL etcd answered.
    pub(crate) ttl: Duration,
    /// The send tick of the last answered keepalive or grant.
    pub(crate) sent: Duration,
    /// The boot-clock time of that send.
    pub(crate) boot_sent: Option<Duration>,
}

impl Lease {
    /// The event that tells a queue about it, if any.
    pub(crate) fn event(&self) -> Option<Event> {
        match (self.id, self.alive) {
            (0, _) => None,
            (lease, true) => Some(Event::SessionAlive {
                lease,
                ttl: self.ttl,
                sent: self.sent,
            }),
            (lease, false) => Some(Event::SessionLost { lease }),
        }
    }
}

// === impl EtcdSession ===

impl EtcdSession {
    /// A session on the etcd that `client` reaches, with a lease of the timing's lease
    /// duration. Call it from within a Tokio runtime: it starts the session's tasks (the
    /// keepalives, and the watch stream the elections share).
    pub fn new(client: Client, timing: Timing) -> Self {
        let client = Arc::new(client);
        let origin = Instant::now();
        let (tx, rx) = watch::channel(Lease::default());
        let (cmds, cmd_rx) = mpsc::unbounded_channel();
        let closed = CancellationToken::new();
        tokio::spawn(keep(
            Arc::clone(&client),
            timing,
            origin,
            tx,
            closed.clone(),
        ));
        tokio::spawn(watches(client.watch_client(), cmd_rx));
        Self {
            inner: Arc::new(Inner {
                client,
                origin,
                lease: rx,
                watches: cmds,
                next_watch: AtomicI64::new(1),
                claimed: Mutex::default(),
                last_failure: Arc::default(),
                permits: Arc::new(tokio::sync::Semaphore::new(REQUESTS_IN_FLIGHT)),
                closed,
            }),
        }
    }

    /// The election `name` on this session: its candidates' keys are `<name>/<lease hex>` with
    /// the session's lease, as for [`EtcdElection::new`](super::EtcdElection::new).
    pub fn election(&self, name: impl Into<String>) -> super::EtcdElection {
        super::EtcdElection {
            client: Arc::clone(&self.inner.client),
            name: name.into(),
            session: Some(self.clone()),
        }
    }

    /// The session's lease while it is alive, for logs and `etcdctl lease timetolive`.
    pub fn lease(&self) -> Option<i64> {
        let l = *self.inner.lease.borrow();
        l.alive.then_some(l.id)
    }

    pub(crate) fn origin(&self) -> Instant {
        self.inner.origin
    }

    /// The lease as it changes; marked changed, so the first wait answers at once.
    pub(crate) fn subscribe(&self) -> watch::Receiver<Lease> {
        let mut rx = self.inner.lease.clone();
        rx.mark_changed();
        rx
    }

    /// Watches `prefix` from `revision` on the shared stream: the changes, then
    /// [`Event::WatchLost`] when the watch ends. Returns the watch's id, to cancel it.
    pub(crate) fn watch(&self, prefix: String, revision: i64) -> (i64, BoxStream<'static, Event>) {
        let id = self.inner.next_watch.fetch_add(1, Ordering::Relaxed);
        let mailbox = Arc::new(Mailbox::default());
        let _ = self.inner.watches.send(Cmd::Watch {
            id,
            prefix,
            revision,
            to: Route::One(Arc::clone(&mailbox)),
        });
        // The hub closes the mailbox when the watch ends, whatever the reason: that is the loss.
        let events = futures_util::stream::unfold(Some(mailbox), |mailbox| async move {
            let mailbox = mailbox?;
            loop {
                let (changes, closed) = mailbox.take();
                if !changes.is_empty() {
                    return Some((Event::Changed(changes), Some(mailbox)));
                }
                if closed {
                    return Some((Event::WatchLost, None));
                }
                mailbox.ready.notified().await;
            }
        });
        (id, events.boxed())
    }

    /// Takes the election `name` for one elector, until the [`Claim`] is dropped; `None` if
    /// another elector holds it.
    pub(crate) fn claim(&self, name: &str) -> Option<Claim> {
        let mut claimed = self
            .inner
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if claimed.sets.contains(&hash(name)) {
            return None;
        }
        claimed.names.insert(name.to_owned()).then(|| Claim {
            session: self.clone(),
            name: name.to_owned(),
        })
    }

    /// What the elections' requests last failed with, shared so each failure is logged once.
    pub(crate) fn last_failure(&self) -> Arc<Mutex<Option<String>>> {
        Arc::clone(&self.inner.last_failure)
    }

    /// The turns for the elections' requests.
    pub(crate) fn permits(&self) -> Arc<tokio::sync::Semaphore> {
        Arc::clone(&self.inner.permits)
    }

    /// Watches `prefix` from `revision` for election `index` of a set: its changes go to
    /// the set's `inbox`. Returns the watch's id, which the inbox names with them.
    pub(crate) fn watch_for(
        &self,
        prefix: String,
        revision: i64,
        inbox: &Arc<Inbox>,
        index: u32,
    ) -> i64 {
        let id = self.inner.next_watch.fetch_add(1, Ordering::Relaxed);
        let _ = self.inner.watches.send(Cmd::Watch {
            id,
            prefix,
            revision,
            to: Route::Set(Arc::clone(inbox), index),
        });
        id
    }

    /// Whether `name` has an elector or a set on this session; else it is claimed for a set.
    /// A set's names are kept as hashes: a few bytes each for 100,000 elections.
    pub(crate) fn claim_for_set(&self, names: &[String]) -> Result<(), String> {
        let mut claimed = self
            .inner
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let mut mine = std::collections::HashSet::with_capacity(names.len());
        for n in names {
            if claimed.names.contains(n) || claimed.sets.contains(&hash(n)) || !mine.insert(hash(n))
            {
                return Err(n.clone());
            }
        }
        claimed.sets.extend(mine);
        Ok(())
    }

    /// Gives back what [`claim_for_set`](Self::claim_for_set) took.
    pub(crate) fn release_set(&self, names: impl Iterator<Item = u64>) {
        let mut claimed = self
            .inner
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        for h in names {
            claimed.sets.remove(&h);
        }
    }

    pub(crate) fn client(&self) -> &Arc<Client> {
        &self.inner.client
    }

    pub(crate) fn unwatch(&self, id: i64) {
        let _ = self.inner.watches.send(Cmd::Cancel { id });
    }
}

/// An elector's hold on its election on a shared session (see [`crate::Error::SessionTaken`]):
/// released when the elector is dropped or its run ends.
pub(crate) struct Claim {
    session: EtcdSession,
    name: String,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.session
            .inner
            .claimed
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .names
            .remove(&self.name);
    }
}

impl std::fmt::Debug for Claim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Claim").field("name", &self.name).finish()
    }
}

impl std::fmt::Debug for EtcdSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdSession")
            .field("lease", &self.lease())
            .finish_non_exhaustive()
    }
}

/// How many of the elections' requests are in flight at a time on one session. etcd answers
/// them one raft entry or read at a time anyway; the rest wait as a few hundred bytes each
/// instead of as whole requests (and HTTP/2 streams) in flight.
const REQUESTS_IN_FLIGHT: usize = 256;

/// How many recent sends keep their boot-clock time.
const SENDS_KEPT: usize = 8;

/// The keeper: runs the session machine until the session is closed and its lease revoked.
async fn keep(
    client: Arc<Client>,
    timing: Timing,
    origin: Instant,
    tx: watch::Sender<Lease>,
    closed: CancellationToken,
) {
    use queue::{Action as QA, Event as QE};
    use session::{Action as A, Event as E};
    let mut machine = Session::new(timing);
    let mut io = Io::for_session(client, origin);
    let mut sends: VecDeque<(Duration, Option<Duration>)> = VecDeque::with_capacity(SENDS_KEPT);
    let mut event = Some(E::Start);
    let mut close_sent = false;
    let mut sleep = std::pin::pin!(tokio::time::sleep_until(origin));
    loop {
        if let Some(ev) = event.take() {
            let now = Instant::now() - origin;
            for action in machine.handle(ev, now) {
                let q = match action {
                    A::Grant { ttl, deadline } => QA::Grant { ttl, deadline },
                    A::KeepAlive { lease, deadline } => QA::KeepAlive { lease, deadline },
                    A::Revoke { lease, deadline } => QA::Revoke { lease, deadline },
                    A::RevokeStale { lease, deadline } => QA::RevokeStale { lease, deadline },
                    A::Alive { lease, ttl, sent } => {
                        let boot_sent =
                            sends.iter().find(|(t, _)| *t == sent).and_then(|(_, b)| *b);
                        tx.send_replace(Lease {
                            id: lease,
                            alive: true,
                            ttl,
                            sent,
                            boot_sent,
                        });
                        continue;
                    }
                    A::Lost { lease } => {
                        tracing::warn!(
                            lease,
                            "the etcd session's lease is gone: every election on it steps down and queues again on a new lease"
                        );
                        tx.send_replace(Lease {
                            id: lease,
                            alive: false,
                            ..Lease::default()
                        });
                        continue;
                    }
                    A::Finished => return,
                    _ => continue,
                };
                if let QA::Grant { .. } | QA::KeepAlive { .. } = q {
                    if sends.len() == SENDS_KEPT {
                        sends.pop_front();
                    }
                    sends.push_back((now, crate::elector::boottime()));
                }
                io.execute(&q);
            }
        }
        let at = machine.deadline().map_or_else(
            || Instant::now() + Duration::from_secs(3600),
            |d| origin + d,
        );
        if sleep.deadline() != at {
            sleep.as_mut().reset(at);
        }
        event = Some(tokio::select! {
            biased;
            () = closed.cancelled(), if !close_sent => {
                close_sent = true;
                E::Close
            }
            () = &mut sleep => E::Timer,
            ev = io.next() => match ev {
                QE::Granted(r) => E::Granted(r),
                QE::KeptAlive(r) => E::KeptAlive(r),
                QE::Revoked(r) => E::Revoked(r),
                _ => continue,
            },
        });
    }
}

/// Where one watch's changes wait for its election: a few dozen bytes, where a channel
/// would allocate a block of slots for each of 100,000 elections.
#[derive(Default)]
struct Mailbox {
    inbox: Mutex<(Vec<Change>, bool)>,
    ready: tokio::sync::Notify,
}

impl Mailbox {
    fn put(&self, changes: Vec<Change>) {
        self.inbox
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .0
            .extend(changes);
        self.ready.notify_one();
    }

    /// No more changes: the watch is lost.
    fn close(&self) {
        self.inbox.lock().unwrap_or_else(PoisonError::into_inner).1 = true;
        self.ready.notify_one();
    }

    /// The changes so far, in order, and whether the watch ended after them.
    fn take(&self) -> (Vec<Change>, bool) {
        let mut inbox = self.inbox.lock().unwrap_or_else(PoisonError::into_inner);
        (std::mem::take(&mut inbox.0), inbox.1)
    }
}

/// Where the changes of the elections of an [`ElectionSet`](super::ElectionSet) wait for its
/// task: one inbox for all, each batch marked with its election and watch.
#[derive(Default)]
pub(crate) struct Inbox {
    items: Mutex<Vec<Delivery>>,
    pub(crate) ready: tokio::sync::Notify,
}

/// Changes for election `index` from watch `watch`; `None`: the watch ended (lost).
pub(crate) struct Delivery {
    pub(crate) index: u32,
    pub(crate) watch: i64,
    pub(crate) changes: Option<Vec<Change>>,
}

impl Inbox {
    fn put(&self, d: Delivery) {
        self.items
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(d);
        self.ready.notify_one();
    }

    /// Everything delivered so far, in order.
    pub(crate) fn take(&self) -> Vec<Delivery> {
        std::mem::take(&mut *self.items.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Where one watch's changes go.
enum Route {
    /// An elector's mailbox.
    One(Arc<Mailbox>),
    /// Election `index` of a set.
    Set(Arc<Inbox>, u32),
}

impl Route {
    fn put(&self, id: i64, changes: Vec<Change>) {
        match self {
            Self::One(m) => m.put(changes),
            Self::Set(inbox, index) => inbox.put(Delivery {
                index: *index,
                watch: id,
                changes: Some(changes),
            }),
        }
    }

    fn close(&self, id: i64) {
        match self {
            Self::One(m) => m.close(),
            Self::Set(inbox, index) => inbox.put(Delivery {
                index: *index,
                watch: id,
                changes: None,
            }),
        }
    }
}

/// A request to the shared watch stream.
enum Cmd {
    Watch {
        id: i64,
        prefix: String,
        revision: i64,
        to: Route,
    },
    Cancel {
        id: i64,
    },
}

/// Where each watch's changes go, and whether the stream they were sent on still runs.
#[derive(Default)]
struct Routes {
    open: bool,
    to: HashMap<i64, Route>,
}

impl Routes {
    /// Ends watch `id`, if it is still routed: its election hears that it is lost.
    fn end(&mut self, id: i64) {
        if let Some(r) = self.to.remove(&id) {
            r.close(id);
        }
    }
}

fn lock(r: &Mutex<Routes>) -> std::sync::MutexGuard<'_, Routes> {
    r.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The writing half of the shared watch stream: opens it with the first watch after it
/// ended, and sends every other watch and cancel on it. Reading is another task's, so a slow
/// write never holds up the answers (etcd stops reading requests while its answers wait).
async fn watches(client: etcd_client::WatchClient, mut cmds: mpsc::UnboundedReceiver<Cmd>) {
    let routes = Arc::new(Mutex::new(Routes::default()));
    let mut sender: Option<WatchRequestSender> = None;
    while let Some(cmd) = cmds.recv().await {
        match cmd {
            Cmd::Watch {
                id,
                prefix,
                revision,
                to,
            } => {
                let opts = WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(revision)
                    .with_watch_id(id);
                {
                    let mut r = lock(&routes);
                    if !r.open {
                        sender = None;
                    }
                    r.to.insert(id, to);
                }
                match &mut sender {
                    Some(s) => {
                        if s.watch(prefix, Some(opts)).await.is_err() {
                            lock(&routes).end(id);
                        }
                    }
                    None => {
                        let mut c = client.clone();
                        match tokio::time::timeout(
                            super::WATCH_OPEN_TIMEOUT,
                            c.watch(prefix, Some(opts)),
                        )
                        .await
                        {
                            Ok(Ok(stream)) => {
                                let (s, answers) = stream.split();
                                lock(&routes).open = true;
                                tokio::spawn(read(answers, Arc::clone(&routes)));
                                sender = Some(s);
                            }
                            _ => lock(&routes).end(id),
                        }
                    }
                }
            }
            Cmd::Cancel { id } => {
                // Cancelled by its election, which no longer listens.
                let open = {
                    let mut r = lock(&routes);
                    r.to.remove(&id);
                    r.open
                };
                if let (true, Some(s)) = (open, &mut sender) {
                    let _ = s.cancel(id).await;
                }
            }
        }
    }
}

/// The reading half: each answer to the watch it names; when the stream ends, every watch
/// on it is lost.
async fn read(mut answers: WatchResponseStream, routes: Arc<Mutex<Routes>>) {
    loop {
        match answers.message().await {
            Ok(Some(resp)) => {
                let id = resp.watch_id();
                if resp.canceled() || resp.compact_revision() > 0 {
                    lock(&routes).end(id);
                    continue;
                }
                let changes = super::changes(&resp);
                if !changes.is_empty()
                    && let Some(r) = lock(&routes).to.get(&id)
                {
                    r.put(id, changes);
                }
            }
            Ok(None) | Err(_) => {
                let mut r = lock(&routes);
                r.open = false;
                for (id, route) in r.to.drain() {
                    route.close(id);
                }
                return;
            }
        }
    }
}
