//! Leader election on a `coordination.k8s.io/v1` Lease, so several replicas can run and only one
//! reconciles.
//!
//! The protocol is client-go's, which every Kubernetes controller speaks:
//! - The Lease names its holder and how long a claim lasts (`leaseDurationSeconds`).
//! - A candidate takes the Lease when it does not exist (create), when it has no holder (released),
//!   or when its record has not changed for the record's lease duration *as measured on the
//!   candidate's own monotonic clock*. Comparing the holder's `renewTime` with our wall clock would
//!   trust two machines' clocks to agree; watching the record stand still does not.
//! - Every write is a replace carrying the `resourceVersion` that was read, so when two candidates
//!   race exactly one wins (the other gets 409 Conflict).
//! - The holder renews every `renew_interval`; if it cannot renew for `renew_deadline` (shorter than
//!   the lease duration) it reports the leadership lost, before anyone else may take over.
//! - On shutdown the holder releases the Lease (no holder, 1 s duration) so a follower takes over at
//!   its next poll instead of waiting out the lease duration.
//!
//! API calls: `get`, `create` and `update` on one Lease; nothing else.

use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::api::MANAGER;

/// Default name of the Lease.
pub const LEASE_NAME: &str = "tokenmint-leader";

/// What can go wrong talking to the API server about the Lease.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading Lease {name}: {source}")]
    Read { name: String, source: kube::Error },
    #[error("writing Lease {name}: {source}")]
    Write { name: String, source: kube::Error },
    #[error("Lease {name} is now held by {holder:?}")]
    TakenOver {
        name: String,
        holder: Option<String>,
    },
}

/// Where the Lease lives, who we are, and the timing of the protocol.
#[derive(Clone, Debug)]
pub struct Settings {
    /// Name of the Lease.
    pub lease_name: String,
    /// Namespace of the Lease.
    pub namespace: String,
    /// This process's name in `holderIdentity`; unique per replica.
    pub identity: String,
    /// How long a claim lasts without renewal before a follower may take over.
    pub lease_duration: Duration,
    /// How often the leader renews.
    pub renew_interval: Duration,
    /// The leader gives up if it has not renewed for this long; shorter than `lease_duration`,
    /// so it stops before a follower can start.
    pub renew_deadline: Duration,
    /// How often followers look at the Lease, and how soon a failed renewal is retried.
    pub retry_period: Duration,
}

impl Settings {
    /// The conventional timing: 15 s lease, renew every 5 s, give up after 10 s, retry every 2 s.
    pub fn new(
        lease_name: impl Into<String>,
        namespace: impl Into<String>,
        identity: impl Into<String>,
    ) -> Self {
        Settings {
            lease_name: lease_name.into(),
            namespace: namespace.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }
}

/// `POD_NAME` in a cluster; otherwise `<hostname>_<pid>`, unique on one machine.
pub fn default_identity() -> String {
    if let Some(pod) = std::env::var("POD_NAME").ok().filter(|p| !p.is_empty()) {
        return pod;
    }
    let host = std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "tokenmint".to_owned());
    format!("{host}_{}", std::process::id())
}

/// What a candidate should do with the Lease as last read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Claim {
    /// There is no Lease: create it.
    Create,
    /// The Lease is free, expired or already ours: replace it with our claim.
    Take,
    /// Someone else holds it; look again no earlier than this instant.
    Wait { until: Instant },
}

/// Decides whether `identity` may claim `lease`, which has looked the same since `unchanged_since`
/// (on our monotonic clock). Pure: the caller tracks when the record last changed.
pub fn claim(
    lease: Option<&LeaseSpec>,
    identity: &str,
    unchanged_since: Instant,
    now: Instant,
) -> Claim {
    let Some(spec) = lease else {
        return Claim::Create;
    };
    let holder = spec.holder_identity.as_deref().unwrap_or_default();
    if holder.is_empty() || holder == identity {
        return Claim::Take;
    }
    // A holder that wrote no duration gets the conventional one rather than none.
    let seconds = spec.lease_duration_seconds.filter(|s| *s > 0).unwrap_or(15);
    let expires = unchanged_since + Duration::from_secs(seconds.unsigned_abs().into());
    if now >= expires {
        Claim::Take
    } else {
        Claim::Wait { until: expires }
    }
}

/// The record `identity` writes to take or renew the Lease, given the one it read.
pub fn claimed(previous: Option<&LeaseSpec>, settings: &Settings, now: Timestamp) -> LeaseSpec {
    let previous_holder = previous
        .and_then(|p| p.holder_identity.as_deref())
        .unwrap_or_default();
    let renewing = previous_holder == settings.identity;
    let transitions = previous.and_then(|p| p.lease_transitions).unwrap_or(0);
    LeaseSpec {
        holder_identity: Some(settings.identity.clone()),
        lease_duration_seconds: Some(
            i32::try_from(settings.lease_duration.as_secs()).unwrap_or(i32::MAX),
        ),
        acquire_time: match previous {
            Some(p) if renewing => p.acquire_time.clone(),
            _ => Some(MicroTime(now)),
        },
        renew_time: Some(MicroTime(now)),
        lease_transitions: Some(if renewing || previous.is_none() {
            transitions
        } else {
            transitions + 1
        }),
        ..LeaseSpec::default()
    }
}

/// The record a leader writes when it steps down: no holder, and a 1 s duration so that even a
/// candidate that ignores the empty holder waits no longer than that.
pub fn released(previous: &LeaseSpec, now: Timestamp) -> LeaseSpec {
    LeaseSpec {
        holder_identity: None,
        lease_duration_seconds: Some(1),
        acquire_time: previous.acquire_time.clone(),
        renew_time: Some(MicroTime(now)),
        lease_transitions: previous.lease_transitions,
        ..LeaseSpec::default()
    }
}

/// A candidate for the Lease.
pub struct Elector {
    api: Api<Lease>,
    settings: Settings,
    /// The `resourceVersion` last seen and when (our clock) it was first seen.
    observed: Option<(String, Instant)>,
}

impl Elector {
    /// A candidate that has not looked at the Lease yet.
    pub fn new(client: Client, settings: Settings) -> Self {
        Elector {
            api: Api::namespaced(client, &settings.namespace),
            settings,
            observed: None,
        }
    }

    /// Waits until this process holds the Lease, then keeps renewing it in the background.
    /// While waiting, `standing_by(true)` follows every successful look at a Lease held by someone
    /// else and `standing_by(false)` every failed one. Dropping the future stops trying; nothing
    /// needs undoing.
    pub async fn acquire(mut self, standing_by: impl Fn(bool)) -> Leadership {
        loop {
            let next = match self.try_acquire().await {
                Ok(Ok(lease)) => return Leadership::start(self, lease),
                Ok(Err(until)) => {
                    standing_by(true);
                    until.min(Instant::now() + self.settings.retry_period)
                }
                Err(e) => {
                    standing_by(false);
                    tracing::warn!(error = %e, "leader election: could not look at the Lease");
                    Instant::now() + self.settings.retry_period
                }
            };
            tokio::time::sleep_until(next).await;
        }
    }

    /// One attempt: the Lease we now hold, or when to try again.
    async fn try_acquire(&mut self) -> Result<Result<Lease, Instant>, Error> {
        // Owned: `observe` below borrows `self` mutably.
        let name = &self.settings.lease_name.clone();
        let current = self.api.get_opt(name).await.map_err(|source| Error::Read {
            name: name.clone(),
            source,
        })?;
        let now = Instant::now();
        let since = self.observe(current.as_ref(), now);
        // A Lease without a spec is one without a holder.
        let spec = current.as_ref().map(|l| l.spec.clone().unwrap_or_default());
        let result = match claim(spec.as_ref(), &self.settings.identity, since, now) {
            Claim::Wait { until } => return Ok(Err(until)),
            Claim::Create => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(name.clone()),
                        namespace: Some(self.settings.namespace.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(claimed(None, &self.settings, Timestamp::now())),
                };
                self.api.create(&post_params(), &lease).await
            }
            Claim::Take => {
                let mut lease = current.unwrap_or_default();
                lease.spec = Some(claimed(spec.as_ref(), &self.settings, Timestamp::now()));
                // Carries the resourceVersion we read: a concurrent claim makes this a 409.
                self.api.replace(name, &post_params(), &lease).await
            }
        };
        match result {
            Ok(lease) => {
                let previous = spec.and_then(|s| s.holder_identity).unwrap_or_default();
                tracing::info!(
                    lease = %name,
                    namespace = %self.settings.namespace,
                    identity = %self.settings.identity,
                    %previous,
                    "leader election: acquired the Lease; now leading"
                );
                Ok(Ok(lease))
            }
            // Someone else created or took it between our read and write.
            Err(kube::Error::Api(status)) if status.code == 409 => {
                Ok(Err(now + self.settings.retry_period))
            }
            Err(source) => Err(Error::Write {
                name: name.clone(),
                source,
            }),
        }
    }

    /// Records when the Lease record last changed, by its `resourceVersion`.
    fn observe(&mut self, lease: Option<&Lease>, now: Instant) -> Instant {
        let version = lease
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        match &self.observed {
            Some((seen, since)) if *seen == version => *since,
            _ => {
                self.observed = Some((version, now));
                now
            }
        }
    }

    /// Renews `lease` until told to stop, or until it was taken over or could not be renewed
    /// within `renew_deadline` (then `lost` is set). Returns the last Lease written, for the release.
    async fn renew(
        &self,
        mut lease: Lease,
        mut stop: oneshot::Receiver<()>,
        lost: watch::Sender<bool>,
    ) -> Option<Lease> {
        let name = &self.settings.lease_name;
        let mut deadline = Instant::now() + self.settings.renew_deadline;
        let mut next = Instant::now() + self.settings.renew_interval;
        loop {
            tokio::select! {
                _ = &mut stop => return Some(lease),
                _ = tokio::time::sleep_until(next) => {}
            }
            // A hung request must not outlive the deadline either.
            let attempt = tokio::time::timeout_at(deadline, self.renew_once(&lease)).await;
            match attempt {
                Ok(Ok(written)) => {
                    lease = written;
                    deadline = Instant::now() + self.settings.renew_deadline;
                    next = Instant::now() + self.settings.renew_interval;
                    tracing::debug!(lease = %name, "leader election: renewed");
                }
                Ok(Err(e @ Error::TakenOver { .. })) => {
                    tracing::error!(error = %e, "leader election: lost the Lease; stepping down");
                    let _ = lost.send(true);
                    return None;
                }
                Ok(Err(e)) if Instant::now() < deadline => {
                    tracing::warn!(error = %e, "leader election: renewal failed; retrying");
                    next = (Instant::now() + self.settings.retry_period).min(deadline);
                }
                Ok(Err(_)) | Err(_) => {
                    tracing::error!(
                        deadline = ?self.settings.renew_deadline,
                        "leader election: could not renew the Lease in time; stepping down"
                    );
                    let _ = lost.send(true);
                    return None;
                }
            }
        }
    }

    /// One renewal: a replace carrying the resourceVersion of our last write. On a conflict the
    /// Lease is read again and, if it is still ours (a write of ours whose answer we missed),
    /// renewed once more from what was read.
    async fn renew_once(&self, lease: &Lease) -> Result<Lease, Error> {
        let name = &self.settings.lease_name;
        let mut base = lease.clone();
        let mut retried = false;
        loop {
            let mut renewal = base.clone();
            renewal.spec = Some(claimed(
                base.spec.as_ref(),
                &self.settings,
                Timestamp::now(),
            ));
            match self.api.replace(name, &post_params(), &renewal).await {
                Ok(written) => return Ok(written),
                Err(kube::Error::Api(status)) if status.code == 409 && !retried => retried = true,
                Err(source) => {
                    return Err(Error::Write {
                        name: name.clone(),
                        source,
                    });
                }
            }
            let current = self.api.get_opt(name).await.map_err(|source| Error::Read {
                name: name.clone(),
                source,
            })?;
            let holder = current
                .as_ref()
                .and_then(|l| l.spec.as_ref())
                .and_then(|s| s.holder_identity.clone());
            match current {
                Some(current) if holder.as_deref() == Some(self.settings.identity.as_str()) => {
                    base = current
                }
                _ => {
                    return Err(Error::TakenOver {
                        name: name.clone(),
                        holder,
                    });
                }
            }
        }
    }

    /// Hands the Lease over: no holder, so a follower takes it at its next look.
    async fn release(&self, lease: &Lease) -> Result<(), Error> {
        let name = &self.settings.lease_name;
        let mut released_lease = lease.clone();
        released_lease.spec = Some(released(
            &lease.spec.clone().unwrap_or_default(),
            Timestamp::now(),
        ));
        self.api
            .replace(name, &post_params(), &released_lease)
            .await
            .map(drop)
            .map_err(|source| Error::Write {
                name: name.clone(),
                source,
            })
    }
}

fn post_params() -> PostParams {
    PostParams {
        field_manager: Some(MANAGER.to_owned()),
        ..PostParams::default()
    }
}

/// Holding the Lease: renewed in the background until [`Leadership::release`] or until lost.
pub struct Leadership {
    stop: oneshot::Sender<()>,
    lost: watch::Receiver<bool>,
    renewer: JoinHandle<(Elector, Option<Lease>)>,
}

impl Leadership {
    fn start(elector: Elector, lease: Lease) -> Self {
        let (stop, stop_rx) = oneshot::channel();
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(async move {
            let last = elector.renew(lease, stop_rx, lost_tx).await;
            (elector, last)
        });
        Leadership {
            stop,
            lost,
            renewer,
        }
    }

    /// Resolves once the Lease could not be renewed in time or was taken over, or the renewer task
    /// ended without being told to stop (it panicked): stop reconciling. Never resolves otherwise.
    pub fn lost(&self) -> impl std::future::Future<Output = ()> + Send + Sync + 'static {
        let mut lost = self.lost.clone();
        async move {
            // An error means the renewer is gone. Before `release` that is a loss: nobody renews.
            let _ = lost.wait_for(|lost| *lost).await;
        }
    }

    /// Whether the Lease has been lost (also when the renewer task died).
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow() || self.lost.has_changed().is_err()
    }

    /// Stops renewing and releases the Lease, unless it was already lost.
    pub async fn release(self) {
        let _ = self.stop.send(());
        match self.renewer.await {
            Ok((elector, Some(lease))) => match elector.release(&lease).await {
                Ok(()) => {
                    tracing::info!(lease = %elector.settings.lease_name, "leader election: released the Lease")
                }
                Err(e) => {
                    tracing::warn!(error = %e, "leader election: could not release the Lease")
                }
            },
            Ok((_, None)) => {}
            Err(e) => tracing::warn!(error = %e, "leader election: renewal task failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn held_by(holder: Option<&str>, seconds: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(str::to_owned),
            lease_duration_seconds: Some(seconds),
            lease_transitions: Some(3),
            ..LeaseSpec::default()
        }
    }

    fn settings(identity: &str) -> Settings {
        Settings::new(LEASE_NAME, "ns", identity)
    }

    #[test]
    fn a_missing_lease_is_created() {
        let now = Instant::now();
        assert_eq!(claim(None, "a", now, now), Claim::Create);
    }

    #[test]
    fn a_released_lease_is_taken_at_once() {
        let now = Instant::now();
        assert_eq!(claim(Some(&held_by(None, 1)), "a", now, now), Claim::Take);
        assert_eq!(
            claim(Some(&held_by(Some(""), 15)), "a", now, now),
            Claim::Take
        );
    }

    #[test]
    fn our_own_lease_is_taken_back_at_once() {
        let now = Instant::now();
        assert_eq!(
            claim(Some(&held_by(Some("a"), 15)), "a", now, now),
            Claim::Take
        );
    }

    #[test]
    fn a_live_holder_is_waited_out_for_its_lease_duration_on_our_clock() {
        let seen = Instant::now();
        let lease = held_by(Some("b"), 15);
        let expires = seen + Duration::from_secs(15);
        assert_eq!(
            claim(Some(&lease), "a", seen, seen + Duration::from_secs(14)),
            Claim::Wait { until: expires }
        );
        assert_eq!(claim(Some(&lease), "a", seen, expires), Claim::Take);
    }

    #[test]
    fn a_lease_without_duration_counts_as_the_conventional_fifteen_seconds() {
        let seen = Instant::now();
        let lease = held_by(Some("b"), 0);
        assert_eq!(
            claim(Some(&lease), "a", seen, seen),
            Claim::Wait {
                until: seen + Duration::from_secs(15)
            }
        );
    }

    #[test]
    fn taking_over_counts_a_transition_and_renewing_does_not() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let taken = claimed(Some(&held_by(Some("b"), 15)), &settings("a"), now);
        assert_eq!(taken.holder_identity.as_deref(), Some("a"));
        assert_eq!(taken.lease_transitions, Some(4));
        assert_eq!(taken.lease_duration_seconds, Some(15));
        assert_eq!(taken.acquire_time, Some(MicroTime(now)));
        assert_eq!(taken.renew_time, Some(MicroTime(now)));

        let later = Timestamp::from_second(1_800_000_005).unwrap();
        let renewed = claimed(Some(&taken), &settings("a"), later);
        assert_eq!(renewed.lease_transitions, Some(4));
        assert_eq!(renewed.acquire_time, Some(MicroTime(now)));
        assert_eq!(renewed.renew_time, Some(MicroTime(later)));
    }

    #[test]
    fn a_first_claim_starts_at_zero_transitions() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        assert_eq!(
            claimed(None, &settings("a"), now).lease_transitions,
            Some(0)
        );
    }

    #[test]
    fn a_release_clears_the_holder_and_shortens_the_lease() {
        let now = Timestamp::from_second(1_800_000_000).unwrap();
        let held = claimed(None, &settings("a"), now);
        let released = released(&held, now);
        assert_eq!(released.holder_identity, None);
        assert_eq!(released.lease_duration_seconds, Some(1));
        assert_eq!(released.lease_transitions, Some(0));
        let later = Instant::now();
        assert_eq!(claim(Some(&released), "b", later, later), Claim::Take);
    }

    #[test]
    fn the_renew_deadline_ends_before_a_follower_may_take_over() {
        let s = settings("a");
        assert!(s.renew_interval < s.renew_deadline);
        assert!(s.renew_deadline + s.retry_period <= s.lease_duration);
    }

    #[tokio::test]
    async fn a_renewer_that_dies_is_a_lost_lease() {
        let (stop, _stop_rx) = oneshot::channel();
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(async move {
            let _keep = lost_tx;
            panic!("renewer crashed");
        });
        let leadership = Leadership {
            stop,
            lost,
            renewer,
        };
        tokio::time::timeout(Duration::from_secs(5), leadership.lost())
            .await
            .expect("lost() resolves when the renewer dies");
        assert!(leadership.is_lost());
    }

    #[tokio::test]
    async fn a_renewer_that_keeps_renewing_is_not_lost() {
        let (stop, _stop_rx) = oneshot::channel();
        let (lost_tx, lost) = watch::channel(false);
        let renewer = tokio::spawn(async move {
            let _keep = lost_tx;
            std::future::pending::<(Elector, Option<Lease>)>().await
        });
        let leadership = Leadership {
            stop,
            lost,
            renewer,
        };
        let waited = tokio::time::timeout(Duration::from_millis(200), leadership.lost()).await;
        assert!(waited.is_err());
        assert!(!leadership.is_lost());
    }
}
