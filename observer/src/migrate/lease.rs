//! One driver at a time: a coordination.k8s.io Lease, renewed while the
//! driver runs. Expiry is judged as client-go's leader election does it:
//! by how long this process has seen the same lease unrenewed on its own
//! monotonic clock, never by comparing wall clocks across machines.
use std::{
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use k8s_openapi::{
    api::coordination::v1::{Lease as KubeLease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::MicroTime,
    jiff::Timestamp,
};
use kube::{
    Api, Client,
    api::{ObjectMeta, PostParams},
};
use tokio::task::JoinHandle;

use super::store::{is_status, kube_err};
use crate::{Error, Result};

pub struct Lease {
    api: Api<KubeLease>,
    name: String,
    holder: String,
    lost: Arc<AtomicBool>,
    renewer: JoinHandle<()>,
}

impl Lease {
    /// Takes the lease, waiting for a holder that stopped renewing to
    /// expire (a crashed driver); refuses a live holder after `patience`.
    pub async fn acquire(
        client: &Client,
        namespace: &str,
        name: &str,
        holder: &str,
        duration: Duration,
        patience: Duration,
    ) -> Result<Lease> {
        let api: Api<KubeLease> = Api::namespaced(client.clone(), namespace);
        let started = Instant::now();
        // (resourceVersion, first seen): a version unchanged for a whole
        // lease duration belongs to a holder that is gone.
        let mut watched: Option<(String, Instant)> = None;
        // Whether another holder wrote its Lease while we watched.
        let mut renewed = false;
        let mut told = false;
        loop {
            let current = api
                .get_opt(name)
                .await
                .map_err(kube_err(format!("reading Lease {name}")))?;
            let taken = match &current {
                None => api
                    .create(&PostParams::default(), &lease(name, holder, duration, None))
                    .await
                    .map(drop),
                Some(l) => {
                    let spec = l.spec.clone().unwrap_or_default();
                    let other = spec
                        .holder_identity
                        .as_deref()
                        .filter(|h| !h.is_empty() && *h != holder);
                    let version = l.metadata.resource_version.clone().unwrap_or_default();
                    if watched.as_ref().is_none_or(|(v, _)| *v != version) {
                        // A new version of a Lease we were already
                        // watching: its holder renewed it.
                        renewed |= watched.is_some() && other.is_some();
                        watched = Some((version, Instant::now()));
                    }
                    let seen_for = watched
                        .as_ref()
                        .map_or(Duration::ZERO, |(_, at)| at.elapsed());
                    let held_for = spec
                        .lease_duration_seconds
                        .map_or(duration, |s| Duration::from_secs(s.max(1) as u64));
                    match other {
                        Some(other) if seen_for < held_for => {
                            if started.elapsed() >= patience {
                                return Err(Error::Migration(refusal(
                                    &format!("{namespace}/{name}"),
                                    other,
                                    renewed,
                                    seen_for,
                                    held_for,
                                )));
                            }
                            if !told {
                                let wait = patience.min(held_for.saturating_sub(seen_for));
                                eprintln!(
                                    "crossover: Lease {name} is held by {other} ({}s lease); \
                                     waiting up to {}s for it to expire",
                                    held_for.as_secs(),
                                    wait.as_secs()
                                );
                                told = true;
                            }
                            tokio::time::sleep(Duration::from_millis(500)).await;
                            continue;
                        }
                        _ => {
                            let mut next = lease(name, holder, duration, Some(l));
                            if other.is_some() {
                                let n = spec.lease_transitions.unwrap_or(0);
                                next.spec.get_or_insert_default().lease_transitions = Some(n + 1);
                            }
                            api.replace(name, &PostParams::default(), &next)
                                .await
                                .map(drop)
                        }
                    }
                }
            };
            match taken {
                Ok(()) => break,
                // Someone wrote between our read and write: read again.
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(kube_err(format!("taking Lease {name}"))(e)),
            }
        }
        let lost = Arc::new(AtomicBool::new(false));
        let renewer = tokio::spawn(renew(
            api.clone(),
            name.to_string(),
            holder.to_string(),
            duration,
            lost.clone(),
        ));
        Ok(Lease {
            api,
            name: name.into(),
            holder: holder.into(),
            lost,
            renewer,
        })
    }

    /// True once another driver took the lease or renewals failed for a
    /// whole lease duration: this driver must not change the cluster.
    pub fn lost(&self) -> bool {
        self.lost.load(Ordering::Relaxed)
    }

    /// Gives the lease up so the next driver need not wait for expiry.
    pub async fn release(self) {
        self.renewer.abort();
        if let Ok(Some(mut l)) = self.api.get_opt(&self.name).await {
            let spec = l.spec.get_or_insert_default();
            if spec.holder_identity.as_deref() == Some(self.holder.as_str()) {
                spec.holder_identity = None;
                let _ = self
                    .api
                    .replace(&self.name, &PostParams::default(), &l)
                    .await;
            }
        }
    }
}

fn lease(name: &str, holder: &str, duration: Duration, old: Option<&KubeLease>) -> KubeLease {
    let now = MicroTime(Timestamp::now());
    let mut spec = old.and_then(|l| l.spec.clone()).unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(holder);
    if !ours {
        spec.acquire_time = Some(now.clone());
    }
    spec.holder_identity = Some(holder.into());
    spec.lease_duration_seconds = Some(duration.as_secs().max(1) as i32);
    spec.renew_time = Some(now);
    KubeLease {
        metadata: ObjectMeta {
            name: Some(name.into()),
            resource_version: old.and_then(|l| l.metadata.resource_version.clone()),
            labels: Some([("app.kubernetes.io/managed-by".into(), "crossover".into())].into()),
            ..Default::default()
        },
        spec: Some(LeaseSpec { ..spec }),
    }
}

async fn renew(
    api: Api<KubeLease>,
    name: String,
    holder: String,
    duration: Duration,
    lost: Arc<AtomicBool>,
) {
    let mut renewed = Instant::now();
    loop {
        tokio::time::sleep(duration / 3).await;
        let result = match api.get_opt(&name).await {
            Ok(Some(l)) => {
                let spec = l.spec.clone().unwrap_or_default();
                if spec.holder_identity.as_deref() != Some(holder.as_str()) {
                    eprintln!(
                        "crossover: Lease {name} was taken by {:?}: stopping",
                        spec.holder_identity
                    );
                    lost.store(true, Ordering::Relaxed);
                    return;
                }
                api.replace(
                    &name,
                    &PostParams::default(),
                    &lease(&name, &holder, duration, Some(&l)),
                )
                .await
                .map(drop)
            }
            Ok(None) => {
                eprintln!("crossover: Lease {name} was deleted: stopping");
                lost.store(true, Ordering::Relaxed);
                return;
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => renewed = Instant::now(),
            Err(e) if renewed.elapsed() >= duration => {
                eprintln!(
                    "crossover: could not renew Lease {name} for {duration:?} ({e}): stopping"
                );
                lost.store(true, Ordering::Relaxed);
                return;
            }
            // A conflict or a blip: the next round tries again, well
            // before the lease runs out.
            Err(_) => {}
        }
    }
}

/// Why a driver gives up on a Lease another holds: renewed while it
/// waited (a live driver), or not changed at all (a driver that stopped
/// renewing, whose Lease has not expired yet).
fn refusal(
    lease: &str,
    other: &str,
    renewed: bool,
    unchanged_for: Duration,
    held_for: Duration,
) -> String {
    if renewed {
        format!(
            "another driver ({other}) holds Lease {lease} and is renewing it: only one driver may \
             run. Wait for it, or stop it with `crossover migrate abort`"
        )
    } else {
        format!(
            "another driver ({other}) holds Lease {lease}: not renewed for {}s of its {}s, it \
             expires in {}s unless renewed. Run again then (a driver that crashed leaves it to \
             expire), or stop it with `crossover migrate abort`",
            unchanged_for.as_secs(),
            held_for.as_secs(),
            held_for.saturating_sub(unchanged_for).as_secs()
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_never_renewed_is_not_said_to_be_renewed() {
        let s = Duration::from_secs;
        let quiet = refusal("ns/l", "driver-a", false, s(30), s(3600));
        assert!(!quiet.contains("renewing"), "{quiet}");
        assert!(
            quiet.contains(
                "holds Lease ns/l: not renewed for 30s of its 3600s, it expires in 3570s"
            ),
            "{quiet}"
        );
        let live = refusal("ns/l", "driver-a", true, s(2), s(15));
        assert!(
            live.contains("holds Lease ns/l and is renewing it"),
            "{live}"
        );
    }
}
