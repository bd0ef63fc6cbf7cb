//! Kubernetes writes that carry the term's fencing token, so that a deposed leader's late write
//! is refused instead of undoing its successor's (feature `kube`).
//!
//! Leader election cannot stop a write that is already on its way: a leader that was frozen
//! (a GC pause, a `SIGSTOP`, a stalled connection) can send, or have in flight, a write it
//! decided on while it still led, and the API server applies it after a successor has acted.
//! The elector ends the term before the lease can expire for anyone else, but only the store
//! itself can refuse a write that arrives late. [`Fence`] makes every guarded object such a
//! store:
//!
//! - every write stamps the object with the term's token, in the annotation
//!   [`TOKEN_ANNOTATION`];
//! - a write is sent only if the object's stored token is not larger than ours, and with the
//!   `resourceVersion` it was checked against as a precondition, so the API server refuses it
//!   (409) if anyone wrote the object in between; then the object is read again and checked
//!   again;
//! - nothing is sent once the term has ended or its deadline has passed.
//!
//! So once a successor has written an object, no write of an earlier term can land on it:
//! tokens on an object never go down. A write of an earlier term to an object the successor has
//! not touched yet can still land; the successor then finds the smaller token and overwrites.
//! Where writes must stop cluster-wide at the handover, add the server-side policy in
//! `deploy/fencing-policy.yaml`, which refuses writes by any Pod that does not hold the Lease.
//!
//! Merge patches and server-side apply cannot carry a precondition on the token, which is why
//! [`Fence::replace`] writes whole objects (`PUT`).
//!
//! ```no_run
//! use k8s_openapi::api::core::v1::ConfigMap;
//! use kube::Api;
//! use leasehold::{Leadership, fence::Fence};
//!
//! async fn write_status(term: &Leadership, api: &Api<ConfigMap>, cached: Option<&ConfigMap>)
//!     -> Result<(), leasehold::fence::Error>
//! {
//!     let mut desired = ConfigMap::default();
//!     desired.metadata.name = Some("status".into());
//!     desired.data = Some([("state".to_string(), "ok".to_string())].into());
//!     // The informer's copy saves a read; a stale copy costs one 409 and a fresh read.
//!     Fence::new(term).replace(api, cached, desired).await?;
//!     Ok(())
//! }
//! ```

use crate::{FencingToken, Leadership};
use kube::{
    Api, Resource, ResourceExt as _,
    api::{DeleteParams, PostParams, Preconditions},
};
use serde::{Serialize, de::DeserializeOwned};
use std::fmt::Debug;
use tokio::time::Instant;

/// The annotation that carries the fencing token of the term that last wrote an object.
pub const TOKEN_ANNOTATION: &str = "leasehold.dev/fencing-token";

/// How many times a write is tried when other writers keep changing the object under it.
const ATTEMPTS: u32 = 5;

/// Errors of fenced writes.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The term has ended, or its deadline passed: nothing was sent. A write sent earlier may
    /// or may not have landed.
    #[error("the term with fencing token {token} has ended; not writing {object}")]
    TermEnded {
        /// The term's token.
        token: FencingToken,
        /// The object that was to be written.
        object: String,
    },
    /// A later term has written the object: this replica is no longer the leader, whatever its
    /// elector believes yet.
    #[error("{object} carries fencing token {theirs}, newer than this term's {ours}; not writing")]
    Superseded {
        /// The object.
        object: String,
        /// This term's token.
        ours: FencingToken,
        /// The token on the object.
        theirs: FencingToken,
    },
    /// The object's token annotation is not a number: someone else wrote it, and overwriting
    /// could undo a newer term's write, so nothing is written until it is fixed.
    #[error(
        "{object} has annotation {TOKEN_ANNOTATION}={value:?}, which is not a fencing token; not writing"
    )]
    CorruptToken {
        /// The object.
        object: String,
        /// The annotation's value.
        value: String,
    },
    /// Other writers changed the object on every attempt.
    #[error("{object} changed under each of {ATTEMPTS} writes; giving up for now")]
    Contended {
        /// The object.
        object: String,
    },
    /// The object has no name.
    #[error("the object to write has no metadata.name")]
    NoName,
    /// The API server refused a request or could not be reached.
    #[error("writing {object}")]
    Kube {
        /// The object.
        object: String,
        /// The cause.
        #[source]
        source: kube::Error,
    },
}

/// Result of fenced writes.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Writes guarded by one term's fencing token; cheap to clone.
#[derive(Clone, Debug)]
pub struct Fence {
    term: Leadership,
}

// === impl Fence ===

impl Fence {
    /// Writes for `term`.
    pub fn new(term: &Leadership) -> Self {
        Self { term: term.clone() }
    }

    /// The token this fence writes.
    pub fn token(&self) -> FencingToken {
        self.term.fencing_token()
    }

    /// Creates or replaces `desired` (its namespace and name are `api`'s and
    /// `metadata.name`), stamped with this term's token, unless a later term has written it.
    ///
    /// `current` is the caller's copy of the stored object, if it has one (an informer's
    /// store): it saves a read. Without it, or when it is stale, the object is read from the
    /// API server. The object's `resourceVersion` in `desired` is ignored. Returns the object
    /// as stored.
    ///
    /// # Errors
    /// [`Error::Superseded`] when the object carries a larger token; [`Error::TermEnded`]
    /// once the term is over; [`Error::CorruptToken`], [`Error::Contended`], [`Error::Kube`].
    pub async fn replace<K>(&self, api: &Api<K>, current: Option<&K>, mut desired: K) -> Result<K>
    where
        K: Resource + Clone + Serialize + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let name = desired.meta().name.clone().ok_or(Error::NoName)?;
        let what = describe::<K>(&name);
        desired
            .annotations_mut()
            .insert(TOKEN_ANNOTATION.into(), self.token().0.to_string());
        let mut current = current.cloned();
        for _ in 0..ATTEMPTS {
            let result = match &current {
                Some(stored) => {
                    self.check(&what, stored)?;
                    let Some(version) = stored.resource_version() else {
                        // Without a version the write would not be a compare-and-swap.
                        current = self.read(api, &name, &what).await?;
                        continue;
                    };
                    desired.meta_mut().resource_version = Some(version);
                    self.send(&what, api.replace(&name, &PostParams::default(), &desired))
                        .await?
                }
                None => {
                    desired.meta_mut().resource_version = None;
                    self.send(&what, api.create(&PostParams::default(), &desired))
                        .await?
                }
            };
            match result {
                Ok(stored) => return Ok(stored),
                // Changed since `current` (or created since we thought it absent).
                Err(e) if is_status(&e, 409) => current = self.read(api, &name, &what).await?,
                Err(source) => {
                    return Err(Error::Kube {
                        object: what,
                        source,
                    });
                }
            }
        }
        Err(Error::Contended { object: what })
    }

    /// Deletes the object `name`, unless a later term has written it, with its
    /// `resourceVersion` as a precondition. Deleting an object that is already gone succeeds.
    ///
    /// # Errors
    /// As [`replace`](Self::replace).
    pub async fn delete<K>(&self, api: &Api<K>, name: &str) -> Result<()>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
        K::DynamicType: Default,
    {
        let what = describe::<K>(name);
        for _ in 0..ATTEMPTS {
            let Some(stored) = self.read(api, name, &what).await? else {
                return Ok(());
            };
            self.check(&what, &stored)?;
            let params = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: stored.resource_version(),
                    uid: stored.uid(),
                }),
                ..DeleteParams::default()
            };
            match self.send(&what, api.delete(name, &params)).await? {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => {}
                Err(e) if is_status(&e, 404) => return Ok(()),
                Err(source) => {
                    return Err(Error::Kube {
                        object: what,
                        source,
                    });
                }
            }
        }
        Err(Error::Contended { object: what })
    }

    /// Reads the object `name` as stored now.
    async fn read<K>(&self, api: &Api<K>, name: &str, what: &str) -> Result<Option<K>>
    where
        K: Resource + Clone + DeserializeOwned + Debug,
    {
        self.send(what, api.get_opt(name))
            .await?
            .map_err(|source| Error::Kube {
                object: what.to_owned(),
                source,
            })
    }

    /// Refuses when `stored` carries a larger token than ours, or one that is not a number.
    fn check<K: Resource>(&self, what: &str, stored: &K) -> Result<()> {
        let Some(value) = stored
            .meta()
            .annotations
            .as_ref()
            .and_then(|a| a.get(TOKEN_ANNOTATION))
        else {
            return Ok(());
        };
        let theirs = value
            .parse()
            .map(FencingToken)
            .map_err(|_| Error::CorruptToken {
                object: what.to_owned(),
                value: value.clone(),
            })?;
        let ours = self.token();
        if theirs > ours {
            return Err(Error::Superseded {
                object: what.to_owned(),
                ours,
                theirs,
            });
        }
        Ok(())
    }

    /// Sends one request if the term is still on, and gives up on its answer at the term's
    /// deadline.
    async fn send<T>(
        &self,
        what: &str,
        request: impl Future<Output = kube::Result<T>>,
    ) -> Result<kube::Result<T>> {
        let ended = || Error::TermEnded {
            token: self.token(),
            object: what.to_owned(),
        };
        let deadline = self.term.valid_until();
        if self.term.is_lost() || Instant::now() >= deadline {
            return Err(ended());
        }
        tokio::select! {
            result = request => Ok(result),
            () = self.term.lost() => Err(ended()),
            () = tokio::time::sleep_until(deadline) => Err(ended()),
        }
    }
}

/// `ConfigMap "name"`, for errors.
fn describe<K: Resource>(name: &str) -> String
where
    K::DynamicType: Default,
{
    format!("{} {name:?}", K::kind(&K::DynamicType::default()))
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}
