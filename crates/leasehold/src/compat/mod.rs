//! Go-shaped entry points, for code ported from Go leader-election packages.
//!
//! Each type here keeps the shape of a Go API that leasehold replaces, so a port can start as a
//! line-for-line translation: [`Options`] and [`run_or_die`] (controller-runtime's
//! `leaderelection.Options`, `NewResourceLock` and client-go's `RunOrDie`), and [`LeaseLocker`]
//! (a blocking `Lock`/`Unlock` on a Lease). They run on the same [`Elector`](crate::Elector) and
//! take the same [`Config`](crate::Config) as the rest of the crate; new code is usually
//! simpler on the elector itself (see `docs/migrating-from-go.md`).

mod locker;
mod options;

pub use locker::{CheckError, LeaseLocker, LockerError};
pub use options::{Options, OptionsError, run_or_die};
