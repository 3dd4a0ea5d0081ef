//! Leader election through a coordination.k8s.io/v1 Lease, so two replicas never
//! reconcile at once.
//!
//! As in client-go, expiry is judged by this process's own clock: a Lease is free when its
//! record has not changed for `lease_duration` since we first saw it, so clock skew between
//! replicas does not matter. Writes use the Lease's resourceVersion, so two candidates
//! racing for a free Lease cannot both win. A leader that cannot renew within the lease
//! duration gives up (the other replica may already lead); one that shuts down releases the
//! Lease so a standby takes over at once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::{PostParams, ResourceExt};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::Result;

/// Settings of one candidate.
#[derive(Clone, Debug)]
pub struct LeaderElection {
    /// Namespace of the Lease.
    pub namespace: String,
    /// Name of the Lease, e.g. the controller's name.
    pub lease_name: String,
    /// This replica's identity (Pod name plus a random suffix).
    pub identity: String,
    /// How long a Lease stays valid without renewal.
    pub lease_duration: Duration,
}

/// Held leadership: `lost` is cancelled when the Lease could not be renewed in time.
pub struct Leadership {
    lost: CancellationToken,
    stop_renewing: CancellationToken,
    renewer: tokio::task::JoinHandle<()>,
    leases: Api<Lease>,
    election: LeaderElection,
}

/// What we last saw of the Lease and when we first saw it so.
struct Observation {
    record: (Option<String>, Option<MicroTime>),
    since: Instant,
}

impl LeaderElection {
    fn retry_every(&self) -> Duration {
        self.lease_duration / 5
    }

    /// Waits until this replica holds the Lease; None if `shutdown` comes first.
    pub async fn acquire(&self, client: &kube::Client, shutdown: &CancellationToken) -> Result<Option<Leadership>> {
        let leases: Api<Lease> = Api::namespaced(client.clone(), &self.namespace);
        let mut observed: Option<Observation> = None;
        loop {
            match self.try_acquire(&leases, &mut observed).await {
                Ok(true) => break,
                Ok(false) => {}
                Err(error) => tracing::warn!(%error, lease = %self.lease_name, "leader election: Lease request failed"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return Ok(None),
                _ = tokio::time::sleep(self.retry_every()) => {}
            }
        }
        tracing::info!(identity = %self.identity, lease = %self.lease_name, "became the leader");
        let lost = CancellationToken::new();
        let stop_renewing = CancellationToken::new();
        let renewer = tokio::spawn(renew(self.clone(), leases.clone(), lost.clone(), stop_renewing.clone()));
        Ok(Some(Leadership {
            lost,
            stop_renewing,
            renewer,
            leases,
            election: self.clone(),
        }))
    }

    /// One attempt: true when we now hold the Lease.
    async fn try_acquire(&self, leases: &Api<Lease>, observed: &mut Option<Observation>) -> Result<bool> {
        let Some(mut lease) = leases.get_opt(&self.lease_name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.lease_name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(self.held_spec(None, 0)),
            };
            return Ok(leases.create(&PostParams::default(), &lease).await.is_ok());
        };
        let spec = lease.spec.clone().unwrap_or_default();
        let holder = spec.holder_identity.clone().filter(|holder| !holder.is_empty());
        let record = (holder.clone(), spec.renew_time.clone());
        let now = Instant::now();
        let unchanged_since = match observed {
            Some(seen) if seen.record == record => seen.since,
            _ => {
                *observed = Some(Observation { record, since: now });
                now
            }
        };
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let free = holder.is_none() || now.duration_since(unchanged_since) >= duration;
        if holder.as_deref() != Some(self.identity.as_str()) && !free {
            return Ok(false);
        }
        let transitions = spec.lease_transitions.unwrap_or(0) + i32::from(holder.as_deref() != Some(&self.identity));
        lease.spec = Some(self.held_spec(
            spec.acquire_time.filter(|_| holder.as_deref() == Some(&self.identity)),
            transitions,
        ));
        // The resourceVersion in `lease` makes this a compare-and-swap: a racing candidate gets a conflict.
        Ok(leases
            .replace(&self.lease_name, &PostParams::default(), &lease)
            .await
            .is_ok())
    }

    fn held_spec(&self, acquired: Option<MicroTime>, transitions: i32) -> LeaseSpec {
        let now = MicroTime(Timestamp::now());
        LeaseSpec {
            holder_identity: Some(self.identity.clone()),
            lease_duration_seconds: Some(self.lease_duration.as_secs().max(1) as i32),
            acquire_time: Some(acquired.unwrap_or_else(|| now.clone())),
            renew_time: Some(now),
            lease_transitions: Some(transitions),
            ..LeaseSpec::default()
        }
    }
}

/// Renews every third of the lease duration; cancels `lost` when no renewal succeeded for
/// two thirds of it, leaving a margin before another replica may take over.
async fn renew(election: LeaderElection, leases: Api<Lease>, lost: CancellationToken, stop: CancellationToken) {
    let mut last_renewal = Instant::now();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = tokio::time::sleep(election.lease_duration / 3) => {}
        }
        let renewed = match leases.get_opt(&election.lease_name).await {
            Ok(Some(mut lease)) => {
                let spec = lease.spec.clone().unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(election.identity.as_str()) {
                    tracing::error!(holder = ?spec.holder_identity, "leader election: another replica holds the Lease");
                    lost.cancel();
                    return;
                }
                let mut held = election.held_spec(spec.acquire_time, spec.lease_transitions.unwrap_or(0));
                held.lease_duration_seconds = spec.lease_duration_seconds.or(held.lease_duration_seconds);
                lease.spec = Some(held);
                leases
                    .replace(&election.lease_name, &PostParams::default(), &lease)
                    .await
                    .is_ok()
            }
            Ok(None) => false,
            Err(error) => {
                tracing::warn!(%error, "leader election: renewing the Lease failed");
                false
            }
        };
        if renewed {
            last_renewal = Instant::now();
        } else if last_renewal.elapsed() >= election.lease_duration * 2 / 3 {
            tracing::error!("leader election: could not renew the Lease in time; giving up leadership");
            lost.cancel();
            return;
        }
    }
}

/// Dropping leadership without `release` (the runner's task was cancelled) stops renewing,
/// exactly like a killed process: the Lease then expires and a standby takes over.
impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

impl Leadership {
    /// Cancelled when leadership is lost.
    pub fn lost(&self) -> CancellationToken {
        self.lost.clone()
    }

    /// Stops renewing and releases the Lease so a standby can take over at once.
    pub async fn release(mut self) {
        self.stop_renewing.cancel();
        let _ = (&mut self.renewer).await;
        if self.lost.is_cancelled() {
            return;
        }
        match self.leases.get_opt(&self.election.lease_name).await {
            Ok(Some(mut lease))
                if lease.spec.as_ref().and_then(|s| s.holder_identity.as_deref()) == Some(&self.election.identity) =>
            {
                if let Some(spec) = lease.spec.as_mut() {
                    spec.holder_identity = None;
                    spec.lease_duration_seconds = Some(1);
                }
                match self
                    .leases
                    .replace(&lease.name_any(), &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => tracing::info!("released the leader Lease"),
                    Err(error) => tracing::warn!(%error, "releasing the leader Lease failed"),
                }
            }
            Ok(_) => {}
            Err(error) => tracing::warn!(%error, "releasing the leader Lease failed"),
        }
    }
}
