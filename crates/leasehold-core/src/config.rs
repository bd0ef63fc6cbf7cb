//! Election timing and its validation.

use std::time::Duration;

/// A timing or identity value that cannot work; the message names the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// The identity is empty.
    #[error("identity must not be empty")]
    EmptyIdentity,
    /// A duration is zero.
    #[error("{field} must be positive")]
    NotPositive {
        /// The field's name (`lease_duration`, `renew_deadline`, `retry_period`).
        field: &'static str,
    },
    /// The lease duration is not a whole number of seconds.
    #[error(
        "lease_duration must be a whole number of seconds (it is stored as leaseDurationSeconds), got {0:?}"
    )]
    FractionalLease(Duration),
    /// The lease does not fit the record's 32-bit `leaseDurationSeconds`.
    #[error(
        "lease_duration must be at most 2147483647 seconds (leaseDurationSeconds is 32-bit), got {0:?}"
    )]
    LeaseTooLong(Duration),
    /// The lease does not outlast the renew deadline.
    #[error("lease_duration ({lease:?}) must be greater than renew_deadline ({renew:?})")]
    LeaseNotAboveRenew {
        /// The lease duration.
        lease: Duration,
        /// The renew deadline.
        renew: Duration,
    },
    /// The leader may renew more often than once a second, with less than a second of margin.
    ///
    /// client-go tells records apart at whole seconds (it compares them as JSON with
    /// `metav1.Time`), and so does everyone on ConfigMap and Endpoints annotations. A renewal in
    /// the same second as the one before is invisible to them, so their view of the leader's
    /// last renewal can be up to a second older than the leader's own. With a margin
    /// (`lease_duration - renew_deadline`) of a second or more the leader still steps down
    /// before any of them can take over. Renewals can come less than a second apart only with
    /// a renew deadline under 2 s (every half renew deadline, or, capped to leave a request
    /// timeout before the step-down, every three quarters of it).
    #[error(
        "lease_duration ({lease:?}) must exceed renew_deadline ({renew:?}) by at least 1s when the renew deadline is under 2s: the leader may then renew more than once a second, and client-go sees a record change at most once a second"
    )]
    MarginUnderASecond {
        /// The lease duration.
        lease: Duration,
        /// The renew deadline.
        renew: Duration,
    },
    /// The renew deadline leaves no room for a retry.
    #[error("renew_deadline ({renew:?}) must be greater than 1.2 × retry_period ({retry:?})")]
    RenewNotAboveRetry {
        /// The renew deadline.
        renew: Duration,
        /// The retry period.
        retry: Duration,
    },
}

/// How long a lease lasts, how long a leader keeps trying to renew, and how often it tries.
///
/// Replaces the duration fields of client-go's `LeaderElectionConfig` (and of
/// controller-runtime's `Options` and Go's `LeaseLocker`). The safety margin is `lease_duration - renew_deadline`: a leader stops acting at most
/// `renew_deadline` after sending its last successful renewal, while no other candidate can take
/// over sooner than `lease_duration` after *observing* that renewal. The margin absorbs clock
/// *rate* differences between hosts and the time to stop a child process.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Timing {
    /// How long a standby waits, from when it observes a record unchanged, before it may take
    /// over. Stored in the record as whole seconds. Default 15 s (client-go's).
    pub lease_duration: Duration,
    /// How long a leader keeps leading without a successful renewal, counted from the send time
    /// of the last one that succeeded. Default 10 s (client-go's).
    pub renew_deadline: Duration,
    /// How long to wait after a failed request, and the shortest interval between renewals
    /// (the leader renews every [`renew_interval`](Self::renew_interval): half the renew
    /// deadline, at least this; up to 20 % jitter is added). Default 2 s (client-go's).
    pub retry_period: Duration,
    /// Whether a leader that is cancelled writes a released record (empty holder,
    /// `leaseDurationSeconds: 1`) so others, Go candidates included, take over at once.
    /// Default on.
    pub release_on_cancel: bool,
}

/// The jitter factor client-go validates against (`JitterFactor`).
pub const JITTER_FACTOR: f64 = 1.2;

// === impl Timing ===

impl Timing {
    /// client-go's default lease duration.
    pub const DEFAULT_LEASE_DURATION: Duration = Duration::from_secs(15);
    /// client-go's default renew deadline.
    pub const DEFAULT_RENEW_DEADLINE: Duration = Duration::from_secs(10);
    /// client-go's default retry period.
    pub const DEFAULT_RETRY_PERIOD: Duration = Duration::from_secs(2);

    /// How often a leader renews: every half renew deadline, and never more often than the
    /// retry period (client-go renews every retry period).
    ///
    /// Half the renew deadline leaves room for a failed renewal and at least one retry before
    /// the step-down, which is all the renewal rate has to guarantee: a retry period later, or,
    /// when that would come too late (a retry period of half the renew deadline, as in
    /// 60 s / 40 s / 20 s), one early try (see the machine's `leader_retry_at`). Others wait a
    /// full lease duration from the last change they saw, so renewing faster
    /// buys no safety and costs API writes. With client-go's defaults (15 s / 10 s / 2 s) the
    /// leader writes every 5 s instead of every 2 s.
    pub fn renew_interval(&self) -> Duration {
        self.retry_period.max(self.renew_deadline / 2)
    }

    /// Derives all three durations from one TTL in client-go's default ratio 15 : 10 : 2
    /// (lease = TTL, renew deadline = TTL × 2/3, retry period = TTL × 2/15). Replaces the k8s-elector
    /// sidecar's `--ttl`.
    pub fn from_ttl(ttl: Duration) -> Self {
        Self {
            lease_duration: ttl,
            renew_deadline: ttl * 2 / 3,
            retry_period: ttl * 2 / 15,
            release_on_cancel: true,
        }
    }

    /// Checks client-go's rules (all positive; lease > renew deadline > 1.2 × retry period), and
    /// that the lease is whole seconds, since the record stores it as an integer and a rounded
    /// down value would let others take over before this leader steps down.
    ///
    /// # Errors
    /// A [`ConfigError`] naming the first field that is wrong.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for (field, d) in [
            ("lease_duration", self.lease_duration),
            ("renew_deadline", self.renew_deadline),
            ("retry_period", self.retry_period),
        ] {
            if d.is_zero() {
                return Err(ConfigError::NotPositive { field });
            }
        }
        if self.lease_duration.subsec_nanos() != 0 {
            return Err(ConfigError::FractionalLease(self.lease_duration));
        }
        if self.lease_duration.as_secs() > i32::MAX as u64 {
            return Err(ConfigError::LeaseTooLong(self.lease_duration));
        }
        if self.lease_duration <= self.renew_deadline {
            return Err(ConfigError::LeaseNotAboveRenew {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline < Duration::from_secs(2)
            && self.lease_duration - self.renew_deadline < Duration::from_secs(1)
        {
            return Err(ConfigError::MarginUnderASecond {
                lease: self.lease_duration,
                renew: self.renew_deadline,
            });
        }
        if self.renew_deadline.as_secs_f64() <= JITTER_FACTOR * self.retry_period.as_secs_f64() {
            return Err(ConfigError::RenewNotAboveRetry {
                renew: self.renew_deadline,
                retry: self.retry_period,
            });
        }
        Ok(())
    }

    /// The lease duration as the record stores it.
    pub fn lease_duration_seconds(&self) -> i32 {
        i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX)
    }
}

impl Default for Timing {
    fn default() -> Self {
        Self {
            lease_duration: Self::DEFAULT_LEASE_DURATION,
            renew_deadline: Self::DEFAULT_RENEW_DEADLINE,
            retry_period: Self::DEFAULT_RETRY_PERIOD,
            release_on_cancel: true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(l: u64, r: u64, p: u64) -> Timing {
        Timing {
            lease_duration: Duration::from_millis(l),
            renew_deadline: Duration::from_millis(r),
            retry_period: Duration::from_millis(p),
            release_on_cancel: true,
        }
    }

    #[test]
    fn defaults_are_client_gos_and_valid() {
        assert_eq!(Timing::default().validate(), Ok(()));
        assert_eq!(Timing::from_ttl(Duration::from_secs(15)), Timing::default());
    }

    #[test]
    fn rules_name_the_field() {
        let e = t(0, 1, 1).validate().unwrap_err();
        assert_eq!(e.to_string(), "lease_duration must be positive");
        assert!(
            t(10_000, 0, 1)
                .validate()
                .unwrap_err()
                .to_string()
                .contains("renew_deadline")
        );
        assert!(matches!(
            t(1500, 1000, 100).validate(),
            Err(ConfigError::FractionalLease(_))
        ));
        assert!(matches!(
            t(10_000, 10_000, 1000).validate(),
            Err(ConfigError::LeaseNotAboveRenew { .. })
        ));
        assert!(matches!(
            t(10_000, 1200, 1000).validate(),
            Err(ConfigError::RenewNotAboveRetry { .. })
        ));
        // Renewing every 667 ms with 667 ms of margin (what `--ttl 2s` gives): a Go standby
        // can see the leader's state up to a second late, past the margin. The same with
        // renewals a second apart by the retry period, but capped at 3/4 of a 1.3 s deadline.
        assert!(matches!(
            Timing::from_ttl(Duration::from_secs(2)).validate(),
            Err(ConfigError::MarginUnderASecond { .. })
        ));
        assert!(matches!(
            t(2000, 1300, 1000).validate(),
            Err(ConfigError::MarginUnderASecond { .. })
        ));
        // A second of margin, or a renew deadline of 2 s or more, is enough.
        assert_eq!(t(2000, 1000, 250).validate(), Ok(()));
        assert_eq!(t(3000, 2000, 1000).validate(), Ok(()));
        assert_eq!(Timing::from_ttl(Duration::from_secs(3)).validate(), Ok(()));
        assert_eq!(t(10_000, 1201, 1000).validate(), Ok(()));
    }
}
