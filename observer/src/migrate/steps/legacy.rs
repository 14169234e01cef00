//! Pods that survived the drain keep the address their CNI gave them:
//! DaemonSet pods (the probe pods, goldpinger, Calico's csi-node-driver)
//! stay on the legacy network until deleted. This restarts them so they
//! come back on the node's new network; a rollback does the reverse.
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};

use crate::{
    Result,
    migrate::{
        context::Context,
        pods,
        store::{is_status, kube_err},
    },
};

/// The network pods on the node should end up on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Towards {
    Cilium,
    Legacy,
}

fn wrong(p: &Pod, cilium: &[ipnet::Ipv4Net], towards: Towards) -> bool {
    let Some(ip) = pods::ip(p) else { return false };
    let on_cilium = cilium.iter().any(|c| c.contains(&ip));
    match towards {
        Towards::Cilium => !on_cilium,
        Towards::Legacy => on_cilium,
    }
}

/// Pods that CNI addresses, whose address can change.
fn movable(p: &Pod) -> bool {
    !pods::is_host_network(p)
        && !pods::is_mirror(p)
        && !pods::is_finished(p)
        && p.metadata.deletion_timestamp.is_none()
}

/// The pod's controller, as kind/name: its replacement has the same.
fn controller(p: &Pod) -> Option<String> {
    p.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| format!("{}/{}", o.kind, o.name))
}

pub async fn restart_on(ctx: &Context, node: &str, towards: Towards) -> Result<String> {
    let cilium = pods::cilium_cidrs(ctx, node).await?;
    if cilium.is_empty() && towards == Towards::Cilium {
        return Err(crate::Error::Migration(format!(
            "CiliumNode {node} has no spec.ipam.podCIDRs: the Cilium operator has not given \
             the node its share of the cluster pool (is IPAM cluster-pool?)"
        )));
    }
    let mut restarted = Vec::new();
    // Controllers whose pod was restarted: each must have a pod here again.
    let mut owners = Vec::new();
    let mut bare = Vec::new();
    for p in pods::on_node(ctx, node)
        .await?
        .iter()
        .filter(|p| movable(p) && wrong(p, &cilium, towards))
    {
        // Nothing would recreate it: left for the SRE, named.
        let Some(owner) = controller(p) else {
            bare.push(pods::name(p));
            continue;
        };
        let ns = p.metadata.namespace.as_deref().unwrap_or("default");
        let name = p.metadata.name.as_deref().unwrap_or_default();
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => restarted.push(pods::name(p)),
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_err(format!("deleting pod {ns}/{name}"))(e)),
        }
        owners.push(owner);
    }
    let what = format!("every pod on {node} Ready on the {towards:?} network");
    pods::wait_for(ctx, ctx.options.ready_timeout, &what, || async {
        let now = pods::on_node(ctx, node).await?;
        let settled = |p: &&Pod| movable(p) && !wrong(p, &cilium, towards) && pods::is_ready(p);
        let mut pending: Vec<String> = now
            .iter()
            .filter(|p| movable(p) && controller(p).is_some() && !settled(p))
            .map(pods::name)
            .collect();
        pending.extend(
            owners
                .iter()
                .filter(|o| {
                    !now.iter()
                        .filter(settled)
                        .any(|p| controller(p).as_ref() == Some(*o))
                })
                .map(|o| format!("the replacement of {o}'s pod")),
        );
        if pending.is_empty() {
            return Ok(Ok(()));
        }
        // Why they are not there, when the node says (no more IPs...).
        let stuck = ctx.stuck(node).await?;
        let why = if stuck.is_empty() {
            String::new()
        } else {
            format!(" ({})", stuck.join("; "))
        };
        Ok(Err(format!("not there yet: {}{why}", pending.join(", "))))
    })
    .await?;
    let mut detail = if restarted.is_empty() {
        "no pod left on the old network".to_string()
    } else {
        format!("restarted {}", restarted.join(", "))
    };
    if !bare.is_empty() {
        detail += &format!(
            "; left on the old network (no controller recreates them): {}",
            bare.join(", ")
        );
    }
    Ok(detail)
}
