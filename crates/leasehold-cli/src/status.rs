//! `leasehold status`: print the lock's record.

use crate::{
    args::StatusArgs,
    run::{Error, Opened, open},
};
use leasehold::LockBackend as _;

/// Reads the record once and prints it. Returns the exit code.
///
/// # Errors
/// [`Error::Lock`] when the lock cannot be read; see [`Error`].
pub async fn status(args: StatusArgs) -> Result<i32, Error> {
    let json = args.json;
    let backend = match open(&args.lock, false, false).await? {
        Opened::Lock(backend, _) => backend,
        #[cfg(feature = "etcd")]
        Opened::Etcd(election) => return crate::etcd::status(&election, &args.lock, json).await,
    };
    let describe = backend.describe();
    let got = backend.get().await.map_err(Error::Lock)?;
    let now = jiff::Timestamp::now();
    let Some(v) = got else {
        if json {
            say!(
                "{}",
                serde_json::json!({ "lock": describe, "exists": false, "holder": null })
            );
        } else {
            say!("{describe}: no lock record (nobody has contended yet)");
        }
        return Ok(0);
    };
    let r = v.record;
    let time_left = r.renew_time.map(|t| {
        let end = t.as_millisecond() + i64::from(r.lease_duration_seconds) * 1000;
        ((end - now.as_millisecond()).max(0) as f64) / 1000.0
    });
    let fmt =
        |t: Option<jiff::Timestamp>| t.map(|t| t.strftime("%Y-%m-%dT%H:%M:%S%.6fZ").to_string());
    if json {
        say!(
            "{}",
            serde_json::json!({
                "lock": describe,
                "exists": true,
                "holder": r.holder_identity,
                "acquire_time": fmt(r.acquire_time),
                "renew_time": fmt(r.renew_time),
                "lease_duration_seconds": r.lease_duration_seconds,
                "transitions": r.leader_transitions,
                "time_left_seconds": time_left,
                "version": v.version.to_string(),
            })
        );
    } else {
        let holder = if r.holder_identity.is_empty() {
            "(released)"
        } else {
            r.holder_identity.as_str()
        };
        say!("lock:            {describe}");
        say!("holder:          {holder}");
        say!(
            "acquire time:    {}",
            fmt(r.acquire_time).unwrap_or_else(|| "-".into())
        );
        say!(
            "renew time:      {}",
            fmt(r.renew_time).unwrap_or_else(|| "-".into())
        );
        say!("lease duration:  {}s", r.lease_duration_seconds);
        say!("transitions:     {}", r.leader_transitions);
        match time_left {
            Some(t) => {
                say!("time left:       {t:.1}s (renew time + lease duration, by this host's clock)")
            }
            None => say!("time left:       -"),
        }
    }
    Ok(0)
}
