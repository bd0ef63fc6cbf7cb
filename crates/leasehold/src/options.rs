//! One configuration value that yields a ready elector on a Kubernetes lock: seed 000's
//! controller-runtime style `Options` + `NewResourceLock` + `RunOrDie`, and seed 001's `Config`
//! with `Enabled`.

use crate::{
    Elector, Leadership, Timing,
    backend::kubernetes::{KubeLock, LockType, default_namespace},
};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

type StartedFn = Box<dyn FnMut(Leadership) + Send>;
type StoppedFn = Box<dyn FnMut() + Send>;
type NewLeaderFn = Box<dyn FnMut(&str) + Send>;

/// Why [`Options::build`] refused a configuration.
#[derive(Debug, thiserror::Error)]
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

/// Leader-election options: the lock, the identity, the durations and the callbacks.
///
/// Replaces seed 000's `Options` (with `NewLeaderElectionConfig`/`NewResourceLock`: see
/// [`build`](Self::build)) and seed 001's `Config` + `Callbacks` (with `Enabled`).
///
/// ```no_run
/// # async fn f(client: kube::Client) -> Result<(), Box<dyn std::error::Error>> {
/// let cancel = tokio_util::sync::CancellationToken::new();
/// let elector = leasehold::Options::new("my-operator")
///     .on_started_leading(|l| { tokio::spawn(async move { l.lost().await }); })
///     .build(client)?;
/// elector.run(cancel).await;
/// # Ok(()) }
/// ```
pub struct Options {
    name: String,
    namespace: Option<String>,
    identity: Option<String>,
    lock_type: LockType,
    timing: Timing,
    enabled: bool,
    events: bool,
    on_started: Option<StartedFn>,
    on_stopped: Option<StoppedFn>,
    on_new_leader: Option<NewLeaderFn>,
}

// === impl Options ===

impl Options {
    /// Options for the lock object `name` (seed 000's `LeaderElectionName`, seed 001's
    /// `LeaseName`), with client-go's default durations (15 s / 10 s / 2 s), a Lease, release on
    /// cancel, Events on, election enabled.
    #[doc(alias = "LeaderElectionName")]
    #[doc(alias = "LeaseName")]
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            namespace: None,
            identity: None,
            lock_type: LockType::Leases,
            timing: Timing::default(),
            enabled: true,
            events: true,
            on_started: None,
            on_stopped: None,
            on_new_leader: None,
        }
    }

    /// The namespace of the lock (seed 000's `LeaderElectionNamespace`, seed 001's
    /// `LeaseNamespace`). Default: the Pod's own namespace in a cluster, else `default`.
    #[doc(alias = "LeaderElectionNamespace")]
    #[doc(alias = "LeaseNamespace")]
    #[must_use]
    pub fn namespace(mut self, namespace: impl Into<String>) -> Self {
        self.namespace = Some(namespace.into());
        self
    }

    /// This candidate's identity, unique among candidates (seed 000's `LeaderElectionID`, seed
    /// 001's `Identity`). Default: the host name + `_` + a random UUID, as controller-runtime
    /// does, so two processes on one host never share one.
    #[doc(alias = "LeaderElectionID")]
    #[doc(alias = "Identity")]
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = Some(identity.into());
        self
    }

    /// The kind of lock object (default [`LockType::Leases`]).
    #[must_use]
    pub fn lock_type(mut self, lock_type: LockType) -> Self {
        self.lock_type = lock_type;
        self
    }

    /// All durations at once.
    #[must_use]
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// How long standbys wait after the last change they observed (default 15 s).
    #[doc(alias = "LeaseDuration")]
    #[must_use]
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.timing.lease_duration = d;
        self
    }

    /// How long a leader keeps leading without a successful renewal (default 10 s).
    #[doc(alias = "RenewDeadline")]
    #[must_use]
    pub fn renew_deadline(mut self, d: Duration) -> Self {
        self.timing.renew_deadline = d;
        self
    }

    /// Renewal interval and retry delay (default 2 s).
    #[doc(alias = "RetryPeriod")]
    #[must_use]
    pub fn retry_period(mut self, d: Duration) -> Self {
        self.timing.retry_period = d;
        self
    }

    /// Whether cancelling releases the lock at once (default true; seed 001's
    /// `ReleaseOnCancel`).
    #[doc(alias = "ReleaseOnCancel")]
    #[must_use]
    pub fn release_on_cancel(mut self, on: bool) -> Self {
        self.timing.release_on_cancel = on;
        self
    }

    /// Whether to elect at all (seed 001's `Enabled`, default true). With `false` the candidate
    /// leads at once, makes no API requests, and logs that election is disabled.
    #[doc(alias = "Enabled")]
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Whether to record Kubernetes Events on the lock object (default true; seed 000's event
    /// recorder).
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

    /// Validates the options and builds the lock and the elector on `client` (seed 000's
    /// `NewResourceLock` + `NewLeaderElectionConfig`, client-go's `NewLeaderElector`). Makes no
    /// API request.
    ///
    /// # Errors
    /// An [`OptionsError`] naming what is invalid.
    #[doc(alias = "NewResourceLock")]
    #[doc(alias = "NewLeaderElectionConfig")]
    pub fn build(
        self,
        client: impl Into<crate::backend::kubernetes::ApiClient>,
    ) -> Result<Elector<KubeLock>, OptionsError> {
        if !is_dns_subdomain(&self.name) {
            return Err(OptionsError::Name(self.name));
        }
        let namespace = self.namespace.unwrap_or_else(default_namespace);
        if !is_dns_label(&namespace) {
            return Err(OptionsError::Namespace(namespace));
        }
        let identity = self.identity.unwrap_or_else(default_identity);
        let lock =
            KubeLock::new(client, self.lock_type, &namespace, &self.name).with_events(self.events);
        let mut elector = Elector::new(lock, identity, self.timing)?.enabled(self.enabled);
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

/// Builds the elector from `options` and runs it until `cancel` fires; on invalid options,
/// prints a message naming the problem and exits the process with status 64 (seed 000's and
/// client-go's `RunOrDie`, which panic instead).
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

/// `<host name>_<random UUID v4>`, controller-runtime's default identity.
pub fn default_identity() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/proc/sys/kernel/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned());
    format!("{host}_{}", uuid_v4())
}

fn uuid_v4() -> String {
    use std::io::Read as _;
    let mut b = [0u8; 16];
    let filled = std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .is_ok();
    if !filled {
        // No /dev/urandom: time and process id still make it unique per process.
        let t = jiff::Timestamp::now().as_nanosecond().to_le_bytes();
        b.copy_from_slice(&t);
        b[..4].copy_from_slice(&std::process::id().to_le_bytes());
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

fn is_dns_label(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 63
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub(crate) fn is_dns_subdomain(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(is_dns_label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_identity_is_host_underscore_uuid() {
        let id = default_identity();
        let (host, uuid) = id.rsplit_once('_').unwrap();
        assert!(!host.is_empty());
        assert_eq!(uuid.len(), 36);
        assert_eq!(&uuid[14..15], "4", "version 4");
        assert_ne!(default_identity(), id, "unique per call");
    }
}
