//! kube-runtime controllers that reconcile only while leading, on caches kept warm on every
//! replica (feature `runtime`).
//!
//! An operator runs several replicas for availability, and only one may reconcile. The usual
//! wiring starts a `Controller` when the replica is elected and drops it when the term ends,
//! which has two costs: a new leader lists the world before its first reconcile (seconds at
//! tens of thousands of objects), and the old leader's in-flight reconciles are cut off, or keep
//! running after the lease is gone. Here every replica runs an [`Informer`] all the time, so a
//! standby's store is as fresh as the leader's. [`run_controller_while_leading`] reconciles
//! through kube-runtime's own [`applier`] (what `Controller::run` is built on) on that store
//! only while leading:
//!
//! - on acquisition every object in the store is reconciled once, since the new leader cannot
//!   know what its predecessor finished, then every change as it arrives;
//! - when renewals fail, the controller stops taking new work a while before the term's
//!   deadline and lets in-flight reconciles finish, so that they end inside the term; it starts
//!   again if a renewal then succeeds;
//! - when the term ends, the controller drains, and only then is the lease released
//!   ([`Elector::run_while_leading`]); reconciles still running half the safety margin after
//!   the term's end are aborted.
//!
//! Only stable kube-runtime API is used; the operator's `kube::Client`, and its k8s-openapi
//! version, are used as they are.

use crate::{Deadline, Elector, Leadership, LockBackend};
use futures_util::{StreamExt as _, stream};
use kube::{
    Api, Resource,
    runtime::{
        WatchStreamExt as _, applier,
        controller::{Action, Config},
        reflector::{self, ObjectRef, Store},
        utils::CancelableJoinHandle,
        watcher,
    },
};
use serde::de::DeserializeOwned;
use std::{
    convert::Infallible,
    fmt::Debug,
    future::Future,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
    time::Duration,
};
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;

type Subscribers<K> = Arc<Mutex<Vec<mpsc::UnboundedSender<ObjectRef<K>>>>>;

/// One watch of the objects a controller reconciles, and its store, kept warm on every replica,
/// leading or not.
///
/// It runs kube-runtime's [`watcher()`] into a [`reflector`](reflector::reflector) store, with
/// kube-runtime's default backoff, until it is dropped. A standby pays for the watch and the
/// memory of the objects, as every replica of a controller-runtime operator with warm-up does.
pub struct Informer<K: Resource + 'static>
where
    K::DynamicType: Eq + Hash + Clone,
{
    store: Store<K>,
    ready: Ready,
    subscribers: Subscribers<K>,
    task: tokio::task::JoinHandle<()>,
}

impl<K> Informer<K>
where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Eq + Hash + Clone + Send + Sync + Unpin,
{
    /// Starts watching `api` with `config`, on the current tokio runtime.
    ///
    /// The objects are stored without `metadata.managedFields`: reconcilers rarely read them,
    /// and they are often the larger part of a small object, which every standby keeps. Use
    /// [`spawn_with`](Self::spawn_with) to keep them, or to drop more.
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn(api: Api<K>, config: watcher::Config) -> Self {
        Self::spawn_with(api, config, |object| {
            object.meta_mut().managed_fields = None;
        })
    }

    /// Like [`spawn`](Self::spawn), with `transform` applied to every object before it is
    /// stored (`|_| {}` keeps them whole).
    ///
    /// # Panics
    /// When called outside a tokio runtime.
    pub fn spawn_with(
        api: Api<K>,
        config: watcher::Config,
        transform: impl FnMut(&mut K) + Send + 'static,
    ) -> Self {
        let (store, writer) = reflector::store::<K>();
        let subscribers: Subscribers<K> = Arc::default();
        let subs = Arc::clone(&subscribers);
        let (ready_tx, ready) = watch::channel(false);
        let task = tokio::spawn(async move {
            let events = watcher(api, config)
                .default_backoff()
                .modify(transform)
                .reflect(writer);
            let mut events = std::pin::pin!(events);
            while let Some(event) = events.next().await {
                match event {
                    Ok(watcher::Event::Apply(object) | watcher::Event::InitApply(object)) => {
                        // Already in the store: tell each running controller which object
                        // changed, without ever waiting for one.
                        let changed = ObjectRef::from_obj(&object);
                        subs.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .retain(|tx| tx.send(changed.clone()).is_ok());
                    }
                    Ok(watcher::Event::InitDone) => {
                        ready_tx.send_replace(true);
                    }
                    Ok(_) => {}
                    Err(error) => tracing::warn!(
                        resource = %K::plural(&K::DynamicType::default()),
                        %error,
                        "the informer's watch failed; retrying with backoff"
                    ),
                }
            }
        });
        Self {
            store,
            ready: Ready(ready),
            subscribers,
            task,
        }
    }

    /// The store: every object the watch has delivered, as a standby sees it too.
    ///
    /// Wait for it to be filled with [`ready`](Self::ready), not with the store's own
    /// `wait_until_ready`: in kube-runtime 5.0 that wakes only the last of several concurrent
    /// waiters, so reconciles that each await it can hang for good (seen here: 3 of 4
    /// concurrent reconciles never returned, and held up the drain at the end of the term).
    pub fn store(&self) -> Store<K> {
        self.store.clone()
    }

    /// Whether the store has been filled by the first list, as a handle any number of tasks can
    /// wait on.
    pub fn ready(&self) -> Ready {
        self.ready.clone()
    }

    /// References to the objects that change from now on.
    fn subscribe(&self) -> mpsc::UnboundedReceiver<ObjectRef<K>> {
        let (tx, rx) = mpsc::unbounded_channel();
        self.subscribers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(tx);
        rx
    }
}

impl<K: Resource + 'static> Drop for Informer<K>
where
    K::DynamicType: Eq + Hash + Clone,
{
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Whether an [`Informer`]'s store has been filled by its first list; cheap to clone, and any
/// number of tasks may wait on it at once.
#[derive(Clone, Debug)]
pub struct Ready(watch::Receiver<bool>);

impl Ready {
    /// Waits until the store is filled. Returns `false` if the informer was dropped first.
    ///
    /// # Cancel safety
    /// Cancel safe.
    pub async fn wait(&self) -> bool {
        self.0.clone().wait_for(|ready| *ready).await.is_ok()
    }

    /// Whether the store is filled now.
    pub fn is_ready(&self) -> bool {
        *self.0.borrow()
    }
}

/// Runs `elector` until `cancel` fires, reconciling the objects of `informer` with `reconcile`
/// (and `error_policy`, as `Controller::run` takes them) only while leading.
///
/// `context` makes each term's context from its [`Leadership`]: put the term's
/// [`fencing_token`](Leadership::fencing_token) there, and carry it on every write. `config`
/// is kube-runtime's controller configuration (debounce, concurrency).
///
/// When renewals fail, the controller stops taking new work a quarter of the renew deadline
/// before the term's deadline (2.5 s with client-go's durations), so that reconciles shorter
/// than that end inside the term. A healthy term never gets that close: the leader renews every
/// half renew deadline.
///
/// # Cancel safety
/// As [`Elector::run`]: cancel through `cancel`.
pub async fn run_controller_while_leading<B, K, Ctx, ReconcilerFut, E>(
    elector: Elector<B>,
    cancel: CancellationToken,
    informer: Informer<K>,
    reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> ReconcilerFut + Clone + Send + 'static,
    error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Clone + Send + Sync + 'static,
    context: impl Fn(&Leadership) -> Arc<Ctx> + Send + Sync + 'static,
    config: Config,
) where
    B: LockBackend,
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Debug + Eq + Hash + Clone + Send + Sync + Unpin,
    Ctx: Send + Sync + 'static,
    ReconcilerFut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let informer = Arc::new(informer);
    let context = Arc::new(context);
    let (grace, drain) = {
        let t = elector.timing();
        (
            (t.lease_duration - t.renew_deadline) / 2,
            t.renew_deadline / 4,
        )
    };
    elector
        .run_while_leading(cancel, move |term: Leadership| {
            let informer = Arc::clone(&informer);
            let (reconcile, error_policy) = (reconcile.clone(), error_policy.clone());
            let context = Arc::clone(&context);
            let config = config.clone();
            async move {
                loop {
                    let stop = term.token();
                    let stopper = tokio::spawn(stop_before_deadline(
                        term.subscribe_deadline(),
                        stop.clone(),
                        drain,
                    ));
                    let ctx = context(&term);
                    reconcile_until(
                        &informer,
                        reconcile.clone(),
                        error_policy.clone(),
                        ctx,
                        config.clone(),
                        &stop,
                        &term,
                        grace,
                    )
                    .await;
                    stopper.abort();
                    if term.is_lost() || !renewed_with_room(&term, drain).await {
                        return;
                    }
                    tracing::info!(fencing_token = %term.fencing_token(), "renewals succeed again; reconciling again");
                }
            }
        })
        .await;
}

/// Reconciles every object of the store once, then every change, until `stop`; then lets the
/// in-flight reconciles finish, for at most `grace` past the later of now and the term's end.
#[allow(clippy::too_many_arguments)]
async fn reconcile_until<K, Ctx, ReconcilerFut, E>(
    informer: &Informer<K>,
    mut reconcile: impl FnMut(Arc<K>, Arc<Ctx>) -> ReconcilerFut + Send + 'static,
    error_policy: impl Fn(Arc<K>, &E, Arc<Ctx>) -> Action + Send + Sync + 'static,
    ctx: Arc<Ctx>,
    config: Config,
    stop: &CancellationToken,
    term: &Leadership,
    grace: Duration,
) where
    K: Resource + Clone + DeserializeOwned + Debug + Send + Sync + 'static,
    K::DynamicType: Default + Debug + Eq + Hash + Clone + Send + Sync + Unpin,
    Ctx: Send + Sync + 'static,
    ReconcilerFut: Future<Output = Result<Action, E>> + Send + 'static,
    E: std::error::Error + Send + 'static,
{
    let store = informer.store();
    // Subscribed before the store is read: a change in between is reconciled twice (the
    // scheduler folds the two), never missed.
    let mut changes = informer.subscribe();
    let filled = informer.ready();
    let ready = tokio::select! {
        r = filled.wait() => r,
        () = stop.cancelled() => return,
    };
    if !ready {
        tracing::error!("the informer has stopped; nothing to reconcile");
        stop.cancelled().await;
        return;
    }
    // Handed over in slices, so that the first reconciles start while the rest are queued
    // (kube-runtime's scheduler takes everything that is ready before it starts one: 20 ms for
    // 10,000 objects here).
    let everything = yielding(store.state().into_iter().map(|o| ObjectRef::from_obj(&*o)));
    let live = stream::poll_fn(move |cx| changes.poll_recv(cx));
    let stop_queue = stop.clone();
    let queue = everything
        .chain(live)
        .map(Ok::<_, Infallible>)
        .take_until(async move { stop_queue.cancelled().await });
    let handle = tokio::runtime::Handle::current();
    let results = applier(
        move |object, ctx| {
            // Each reconcile on a task of its own, as `Controller::run` does, and a panic in it
            // caught here: kube-runtime would carry it up and end this replica's run.
            let name = ObjectRef::from_obj(&*object).to_string();
            let inner = AbortOnDrop(handle.spawn(reconcile(object, ctx)));
            CancelableJoinHandle::spawn(
                async move {
                    let mut inner = inner;
                    match (&mut inner.0).await {
                        Ok(result) => result,
                        Err(error) => {
                            tracing::error!(object = %name, %error, "reconcile panicked; trying it again in {PANIC_RETRY:?}");
                            Ok(Action::requeue(PANIC_RETRY))
                        }
                    }
                },
                &handle,
            )
        },
        error_policy,
        ctx,
        store,
        queue,
        config,
    );
    let drained = results.for_each(|result| {
        if let Err(error) = result {
            tracing::warn!(%error, "reconcile failed");
        }
        std::future::ready(())
    });
    let hard_stop = async {
        stop.cancelled().await;
        let end = term.valid_until().max(Instant::now());
        tokio::time::sleep_until(end + grace).await;
    };
    tokio::select! {
        () = drained => {}
        () = hard_stop => tracing::error!(
            fencing_token = %term.fencing_token(),
            ?grace,
            "reconciles still running past the end of the term; aborting them"
        ),
    }
}

/// The items of `items`, with a pause for other work every [`SLICE`] items.
fn yielding<T>(items: impl Iterator<Item = T> + Unpin) -> impl futures_util::Stream<Item = T> {
    let mut items = items.enumerate();
    let mut paused = false;
    stream::poll_fn(move |cx| {
        if !paused {
            if let Some((i, item)) = items.next() {
                paused = (i + 1) % SLICE == 0;
                return std::task::Poll::Ready(Some(item));
            }
            return std::task::Poll::Ready(None);
        }
        paused = false;
        cx.waker().wake_by_ref();
        std::task::Poll::Pending
    })
}

/// How many objects of the everything-once pass are queued at a time.
const SLICE: usize = 64;

/// How long after a reconcile panicked it is tried again.
const PANIC_RETRY: Duration = Duration::from_secs(5);

/// A task aborted when its handle is dropped: a reconcile does not outlive the controller that
/// started it.
struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Cancels `stop` once the term's deadline is within `drain` (renewals are failing), so that
/// in-flight reconciles finish inside the term.
async fn stop_before_deadline(
    mut deadline: watch::Receiver<Deadline>,
    stop: CancellationToken,
    drain: Duration,
) {
    loop {
        let at = deadline.borrow_and_update().at;
        let start_draining = at.checked_sub(drain).unwrap_or(at);
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep_until(start_draining) => break,
            // The term has ended: its token stops the controller, no warning needed.
            r = deadline.changed() => if r.is_err() { return },
        }
    }
    tracing::warn!("renewals are failing: draining the controller before the term's deadline");
    stop.cancel();
}

/// After a drain that renewals outlived: waits until the term's deadline is again more than
/// `drain` away (`true`), or the term ends (`false`).
async fn renewed_with_room(term: &Leadership, drain: Duration) -> bool {
    let mut deadline = term.subscribe_deadline();
    loop {
        let at = deadline.borrow_and_update().at;
        if at.checked_sub(drain).is_some_and(|t| t > Instant::now()) {
            return true;
        }
        tokio::select! {
            () = term.lost() => return false,
            r = deadline.changed() => if r.is_err() { return false },
        }
    }
}
