//! One value that yields a ready elector on a Kubernetes lock, in the shape of
//! controller-runtime's `leaderelection.Options` with client-go's `RunOrDie`.

use crate::{
    Config, Elector, Leadership,
    backend::kubernetes::{
        KubeLock, LockType, default_namespace, is_namespace_name, is_object_name,
    },
};
use tokio_util::sync::CancellationToken;

type StartedFn = Box<dyn FnMut(Leadership) + Send>;
type StoppedFn = Box<dyn FnMut() + Send>;
type NewLeaderFn = Box<dyn FnMut(&str) + Send>;

/// Why [`Options::build`] refused a configuration.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OptionsError {
    /// The lock name is not a valid Kubernetes object name.
    #[error(
        "lock name `{0}` is not a valid object name (lowercase letters, digits, '-' and '.', at most 253)"
    )]
    Name(String),
    /// The namespace is not a valid namespace name.
    #[error(
        "namespace `{0}` is not a valid namespace (lowercase letters, digits, '-', at most 63)"
    )]
    Namespace(String),
    /// The identity or timing is invalid.
    #[error(transparent)]
    Elector(#[from] crate::Error),
}

/// Leader-election options: the lock object, the candidate's [`Config`] and the callbacks.
///
/// Replaces controller-runtime's `leaderelection.Options` (with `NewResourceLock` and
/// `NewLeaderElectionConfig`: see [`build`](Self::build)) and the `Config` + `Callbacks` of Go
/// electors that add an `Enabled` switch.
///
/// ```no_run
/// # async fn f(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// use leasehold::{Config, compat::Options};
/// use std::time::Duration;
///
/// let cancel = tokio_util::sync::CancellationToken::new();
/// let elector = Options::new("my-operator")
///     .config(Config::with_unique_identity().lease_duration(Duration::from_secs(15)))
///     .on_started_leading(|l| { tokio::spawn(async move { l.lost().await }); })
///     .build(client)?;
/// elector.run(cancel).await;
/// # Ok(()) }
/// ```
#[doc(alias = "LeaderElectionConfig")]
pub struct Options {
    name: String,
    namespace: Option<String>,
    config: Config,
    lock_type: LockType,
    events: bool,
    on_started: Option<StartedFn>,
    on_stopped: Option<StoppedFn>,
    on_new_leader: Option<NewLeaderFn>,
}

// === impl Options ===

impl Options {
    /// Options for the lock object `name` (controller-runtime's `LeaderElectionName`), with a
    /// Lease, Events on, and [`Config::with_unique_identity`]: client-go's durations
    /// (15 s / 10 s / 2 s), release on cancel, election enabled, and an identity of
    /// `<host>_<uuid>`, as controller-runtime makes it.
    #[doc(alias = "LeaderElectionName")]
    #[doc(alias = "LeaseName")]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            config: Config::with_unique_identity(),
            lock_type: LockType::Leases,
            events: true,
            on_started: None,
            on_stopped: None,
            on_new_leader: None,
        }
    }

    /// The namespace of the lock (`LeaderElectionNamespace`). Default: the Pod's own namespace
    /// in a cluster, else `default`.
    #[doc(alias = "LeaderElectionNamespace")]
    #[doc(alias = "LeaseNamespace")]
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// The candidate's configuration: identity, durations, release on cancel, whether to elect
    /// at all (`LeaderElectionID`, `LeaseDuration`, `RenewDeadline`, `RetryPeriod`,
    /// `LeaderElectionReleaseOnCancel`, `Enabled`).
    #[must_use]
    pub fn config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// The kind of lock object (default [`LockType::Leases`]; `LeaderElectionResourceLock`).
    #[doc(alias = "LeaderElectionResourceLock")]
    #[must_use]
    pub fn lock_type(mut self, lock_type: LockType) -> Self {
        self.lock_type = lock_type;
        self
    }

    /// Whether to record Kubernetes Events on the lock object (default true), as
    /// controller-runtime's event recorder does.
    #[must_use]
    pub fn events(mut self, on: bool) -> Self {
        self.events = on;
        self
    }

    /// Called when this candidate starts leading (`OnStartedLeading`).
    #[doc(alias = "OnStartedLeading")]
    #[must_use]
    pub fn on_started_leading(mut self, f: impl FnMut(Leadership) + Send + 'static) -> Self {
        self.on_started = Some(Box::new(f));
        self
    }

    /// Called when this candidate stops leading (`OnStoppedLeading`).
    #[doc(alias = "OnStoppedLeading")]
    #[must_use]
    pub fn on_stopped_leading(mut self, f: impl FnMut() + Send + 'static) -> Self {
        self.on_stopped = Some(Box::new(f));
        self
    }

    /// Called once per change of holder (`OnNewLeader`).
    #[doc(alias = "OnNewLeader")]
    #[must_use]
    pub fn on_new_leader(mut self, f: impl FnMut(&str) + Send + 'static) -> Self {
        self.on_new_leader = Some(Box::new(f));
        self
    }

    /// Validates the options and builds the lock and the elector on `client`
    /// (controller-runtime's `NewResourceLock` + `NewLeaderElectionConfig`, client-go's
    /// `NewLeaderElector`). Makes no API request.
    ///
    /// # Errors
    /// An [`OptionsError`] naming what is invalid.
    #[doc(alias = "NewResourceLock")]
    #[doc(alias = "NewLeaderElectionConfig")]
    pub fn build(
        self,
        client: impl Into<crate::backend::kubernetes::ApiClient>,
    ) -> Result<Elector<KubeLock>, OptionsError> {
        if !is_object_name(&self.name) {
            return Err(OptionsError::Name(self.name));
        }
        let namespace = self.namespace.unwrap_or_else(default_namespace);
        if !is_namespace_name(&namespace) {
            return Err(OptionsError::Namespace(namespace));
        }
        let lock =
            KubeLock::new(client, self.lock_type, &namespace, &self.name).with_events(self.events);
        let mut elector = Elector::with_config(lock, self.config)?;
        if let Some(f) = self.on_started {
            elector = elector.on_started_leading(f);
        }
        if let Some(f) = self.on_stopped {
            elector = elector.on_stopped_leading(f);
        }
        if let Some(f) = self.on_new_leader {
            elector = elector.on_new_leader(f);
        }
        Ok(elector)
    }
}

/// Builds the elector from `options` and runs it until `cancel` fires. **On invalid options it
/// ends the process**: it prints a message naming the problem and exits with status 64 (client-go's
/// `RunOrDie` panics instead). Use [`Options::build`] to handle the error yourself.
#[doc(alias = "RunOrDie")]
pub async fn run_or_die(
    client: impl Into<crate::backend::kubernetes::ApiClient>,
    options: Options,
    cancel: CancellationToken,
) {
    match options.build(client) {
        Ok(elector) => elector.run(cancel).await,
        Err(e) => {
            eprintln!(
                "leasehold: invalid leader election options: {}",
                crate::display_chain(&e)
            );
            std::process::exit(64);
        }
    }
}
