//! The one configuration of a candidate: who it is, its durations, and the switches that change
//! how it elects. The [`Elector`](crate::Elector), the Go-shaped
//! [`compat::Options`](crate::compat::Options) and [`compat::LeaseLocker`](crate::compat::LeaseLocker)
//! and the `leasehold` CLI all take this value, so a setting means the same thing, and is
//! validated the same way, wherever it is set.

use crate::Timing;
use leasehold_core::ConfigError;
use std::time::Duration;

/// How one candidate takes part in an election.
///
/// Replaces the candidate's half of client-go's `LeaderElectionConfig` (the durations,
/// `ReleaseOnCancel`, the lock's `Identity`) and controller-runtime's matching `Options`
/// fields; the lock and the callbacks are given separately.
///
/// ```
/// use leasehold::Config;
/// use std::time::Duration;
///
/// let config = Config::new("replica-1")
///     .lease_duration(Duration::from_secs(15))
///     .renew_deadline(Duration::from_secs(10))
///     .retry_period(Duration::from_secs(2));
/// assert!(config.validate().is_ok());
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Config {
    /// This candidate's identity, unique among the candidates of one election. It is written
    /// into the record as the holder.
    pub identity: String,
    /// The durations, and whether a cancelled leader releases the lock.
    pub timing: Timing,
    /// Whether to elect at all (default true). With `false` the candidate leads at once, makes
    /// no requests to the lock, and logs that election is disabled: for running one replica
    /// locally or in tests with the same code path.
    pub enabled: bool,
    /// Whether a holder's expiry is measured from when this candidate observed its record
    /// (`true`, the default and the safe choice) or from the `renewTime` written in the record
    /// (`false`), which lets a restarted candidate take over sooner but trusts other hosts'
    /// wall clocks. See
    /// [`Machine::with_record_time_expiry`](leasehold_core::Machine::with_record_time_expiry).
    pub use_observed_time: bool,
}

// === impl Config ===

impl Config {
    /// A candidate named `identity`, with client-go's durations (15 s / 10 s / 2 s), release on
    /// cancel, election enabled and observed-time expiry.
    pub fn new(identity: impl Into<String>) -> Self {
        Self {
            identity: identity.into(),
            timing: Timing::default(),
            enabled: true,
            use_observed_time: true,
        }
    }

    /// Like [`new`](Self::new), with an identity no other process shares:
    /// `<host name>_<random UUID>`, as controller-runtime makes it.
    pub fn with_unique_identity() -> Self {
        Self::new(default_identity())
    }

    /// Sets [`identity`](Self::identity).
    #[doc(alias = "Identity")]
    #[doc(alias = "LeaderElectionID")]
    #[must_use]
    pub fn identity(mut self, identity: impl Into<String>) -> Self {
        self.identity = identity.into();
        self
    }

    /// Sets all durations at once.
    #[must_use]
    pub fn timing(mut self, timing: Timing) -> Self {
        self.timing = timing;
        self
    }

    /// How long a standby waits after the last change it observed before it may take over
    /// (default 15 s). Whole seconds: the record stores it as an integer.
    #[doc(alias = "LeaseDuration")]
    #[must_use]
    pub fn lease_duration(mut self, d: Duration) -> Self {
        self.timing.lease_duration = d;
        self
    }

    /// How long a leader keeps leading without a successful renewal, counted from the send
    /// time of the last one that succeeded (default 10 s).
    #[doc(alias = "RenewDeadline")]
    #[must_use]
    pub fn renew_deadline(mut self, d: Duration) -> Self {
        self.timing.renew_deadline = d;
        self
    }

    /// How long to wait after a failed request, and the shortest interval between renewals
    /// (default 2 s).
    #[doc(alias = "RetryPeriod")]
    #[must_use]
    pub fn retry_period(mut self, d: Duration) -> Self {
        self.timing.retry_period = d;
        self
    }

    /// Whether a cancelled leader writes a released record so others take over at once
    /// (default true). Turn it off only if the work the lease guards may outlive the process.
    #[doc(alias = "ReleaseOnCancel")]
    #[doc(alias = "LeaderElectionReleaseOnCancel")]
    #[must_use]
    pub fn release_on_cancel(mut self, on: bool) -> Self {
        self.timing.release_on_cancel = on;
        self
    }

    /// Sets [`enabled`](Self::enabled).
    #[doc(alias = "Enabled")]
    #[must_use]
    pub fn enabled(mut self, enabled: bool) -> Self {
        self.enabled = enabled;
        self
    }

    /// Sets [`use_observed_time`](Self::use_observed_time).
    #[doc(alias = "UseObservedTime")]
    #[must_use]
    pub fn use_observed_time(mut self, observed: bool) -> Self {
        self.use_observed_time = observed;
        self
    }

    /// Checks the identity and client-go's rules for the durations.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.identity.is_empty() {
            return Err(ConfigError::EmptyIdentity);
        }
        self.timing.validate()
    }
}

/// `<host name>_<random UUID v4>`, controller-runtime's default identity: unique per process,
/// and still telling which host holds the lock.
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

    #[test]
    fn validation_names_the_identity_before_the_durations() {
        let c = Config::new("").renew_deadline(Duration::ZERO);
        assert_eq!(c.validate(), Err(ConfigError::EmptyIdentity));
        let c = Config::new("a").renew_deadline(Duration::from_secs(20));
        assert!(matches!(
            c.validate(),
            Err(ConfigError::LeaseNotAboveRenew { .. })
        ));
    }
}
