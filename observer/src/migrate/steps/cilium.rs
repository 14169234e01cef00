//! Restarting the node's Cilium agent: the guide's
//! `kubectl -n kube-system delete pod --field-selector spec.nodeName=$NODE
//! -l k8s-app=cilium` and `rollout status ds/cilium`. The new agent reads
//! the CiliumNodeConfig the label selected and takes over the node's CNI.
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, api::DeleteParams};

use crate::{
    Error, Result,
    migrate::{
        context::Context,
        pods,
        store::{is_status, kube_err},
    },
};

/// UID of the node's Cilium agent pod now, which the driver writes down
/// before [`restart_agent`] deletes it.
pub async fn current_agent_uid(ctx: &Context, node: &str) -> Result<String> {
    pods::cilium_agent(ctx, node)
        .await?
        .and_then(|p| p.metadata.uid)
        .ok_or_else(|| {
            Error::Migration(format!(
                "no Cilium agent pod on node {node} (namespace {}, selector {}): is the cilium \
                 DaemonSet installed and scheduled there?",
                ctx.options.cilium_namespace, ctx.options.cilium_selector
            ))
        })
}

/// Deletes the agent pod `old` (unless that already happened) and waits
/// for its replacement to be Ready.
pub async fn restart_agent(ctx: &Context, node: &str, old: Option<&str>) -> Result<String> {
    let old = match old {
        Some(uid) => uid.to_string(),
        None => current_agent_uid(ctx, node).await?,
    };
    if let Some(pod) = pods::cilium_agent(ctx, node).await?
        && pod.metadata.uid.as_deref() == Some(old.as_str())
        && pod.metadata.deletion_timestamp.is_none()
    {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.options.cilium_namespace);
        let name = pod.metadata.name.clone().unwrap_or_default();
        match api.delete(&name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(e) if is_status(&e, 404) => {}
            Err(e) => return Err(kube_err(format!("deleting Cilium agent pod {name}"))(e)),
        }
    }
    let what = format!("a new Cilium agent pod Ready on {node}");
    let name = pods::wait_for(ctx, ctx.options.ready_timeout, &what, || async {
        Ok(match pods::cilium_agent(ctx, node).await? {
            Some(p) if p.metadata.uid.as_deref() != Some(old.as_str()) && pods::is_ready(&p) => {
                Ok(p.metadata.name.unwrap_or_default())
            }
            Some(p) if p.metadata.uid.as_deref() != Some(old.as_str()) => {
                Err(format!("{} is not Ready yet", pods::name(&p)))
            }
            Some(_) => Err("the old agent pod is still there".into()),
            None => Err("no agent pod on the node yet".into()),
        })
    })
    .await?;
    Ok(format!("Cilium agent restarted: {name} Ready"))
}
