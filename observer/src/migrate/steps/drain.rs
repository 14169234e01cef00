//! `kubectl drain --ignore-daemonsets` through the Eviction API: disruption
//! budgets are respected (a 429 is retried with backoff until the drain
//! timeout), DaemonSet and static pods stay, pods without a controller
//! are refused unless the SRE allows losing them.
use std::{collections::BTreeMap, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::EvictParams};
use tokio::time::Instant;

use crate::{
    Error, Result,
    migrate::{
        context::Context,
        pods,
        store::{is_status, kube_err},
    },
};

const FIRST_BACKOFF: Duration = Duration::from_secs(1);
const MAX_BACKOFF: Duration = Duration::from_secs(16);
/// A progress line at least this often while pods remain, and whenever
/// their number changes.
const PROGRESS_EVERY: Duration = Duration::from_secs(10);

/// Pods the drain must move.
fn to_evict(all: &[Pod]) -> Vec<&Pod> {
    all.iter()
        .filter(|p| !pods::is_daemonset(p) && !pods::is_mirror(p))
        .collect()
}

pub async fn drain(ctx: &Context, node: &str) -> Result<String> {
    let deadline = Instant::now() + ctx.options.drain_timeout;
    // Per pod (namespace/name): when to try again, the backoff, why.
    let mut blocked: BTreeMap<String, (Instant, Duration, String)> = BTreeMap::new();
    let mut evicted = 0usize;
    let mut said: Option<(usize, Instant)> = None;
    loop {
        ctx.check_lease()?;
        let all = pods::on_node(ctx, node).await?;
        let left = to_evict(&all);
        if left.is_empty() {
            return Ok(format!("{} evicted", crate::migrate::count(evicted, "pod")));
        }
        let now = Instant::now();
        if said.is_none_or(|(n, at)| n != left.len() || now - at >= PROGRESS_EVERY) {
            said = Some((left.len(), now));
            let waiting: Vec<String> = blocked
                .iter()
                .map(|(name, (_, _, why))| format!("{name}: {why}"))
                .collect();
            let timeout = Duration::from_secs(deadline.saturating_duration_since(now).as_secs());
            let s = if left.len() == 1 { "" } else { "s" };
            eprintln!(
                "crossover: {node}: drain: {} pod{s} left, {} before --drain-timeout{}{}",
                left.len(),
                humantime::format_duration(timeout),
                if waiting.is_empty() {
                    ""
                } else {
                    "; held back: "
                },
                waiting.join(", ")
            );
        }
        let bare: Vec<String> = left
            .iter()
            .filter(|p| pods::controller_kind(p).is_none() && !pods::is_finished(p))
            .map(|p| pods::name(p))
            .collect();
        if !bare.is_empty() && !ctx.options.evict_bare_pods {
            return Err(Error::Migration(format!(
                "node {node} runs pods no controller will recreate: {}. Evicting them loses \
                 them; move them yourself, or pass --evict-bare-pods",
                bare.join(", ")
            )));
        }
        if Instant::now() >= deadline {
            let still: Vec<String> = left
                .iter()
                .map(|p| {
                    let name = pods::name(p);
                    match blocked.get(&name) {
                        Some((_, _, why)) => format!("{name} ({why})"),
                        None => format!("{name} (terminating)"),
                    }
                })
                .collect();
            return Err(Error::Migration(format!(
                "drain of {node} timed out after {}s; still there: {}",
                ctx.options.drain_timeout.as_secs(),
                still.join(", ")
            )));
        }
        for pod in left
            .iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
        {
            let name = pods::name(pod);
            if blocked
                .get(&name)
                .is_some_and(|(at, _, _)| *at > Instant::now())
            {
                continue;
            }
            match evict(ctx, pod).await? {
                None => {
                    blocked.remove(&name);
                    evicted += 1;
                }
                Some(why) => {
                    let backoff = blocked
                        .get(&name)
                        .map_or(FIRST_BACKOFF, |(_, b, _)| (*b * 2).min(MAX_BACKOFF));
                    blocked.insert(name, (Instant::now() + backoff, backoff, why));
                }
            }
        }
        tokio::time::sleep(ctx.options.poll).await;
    }
}

/// `None` when the pod is evicted (or already gone); `Some(why)` when a
/// disruption budget forbids it for now.
async fn evict(ctx: &Context, pod: &Pod) -> Result<Option<String>> {
    let ns = pod.metadata.namespace.as_deref().unwrap_or("default");
    let name = pod.metadata.name.as_deref().unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    match api.evict(name, &EvictParams::default()).await {
        Ok(_) => Ok(None),
        Err(e) if is_status(&e, 404) => Ok(None),
        // 429: a PodDisruptionBudget allows no disruption now. 500 is what
        // older servers answer for a pod covered by several budgets.
        Err(kube::Error::Api(s)) if s.code == 429 || s.code == 500 => {
            Ok(Some(format!("{} {}", s.code, s.message)))
        }
        Err(e) => Err(kube_err(format!("evicting {ns}/{name}"))(e)),
    }
}
