//! Reading pods and nodes the way `kubectl drain` and the migration guide
//! look at them.
use std::{net::Ipv4Addr, time::Duration};

use ipnet::Ipv4Net;
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, api::ListParams};

use super::{context::Context, store::kube_err};
use crate::{Error, Result, cluster::cilium::CiliumNode, cluster::index::pod_ips};

/// Every pod on `node`, in every namespace.
pub async fn on_node(ctx: &Context, node: &str) -> Result<Vec<Pod>> {
    let api: Api<Pod> = Api::all(ctx.client.clone());
    let params = ListParams::default().fields(&format!("spec.nodeName={node}"));
    Ok(api
        .list(&params)
        .await
        .map_err(kube_err(format!("listing pods on node {node}")))?
        .items)
}

pub fn name(pod: &Pod) -> String {
    format!(
        "{}/{}",
        pod.metadata.namespace.as_deref().unwrap_or("default"),
        pod.metadata.name.as_deref().unwrap_or("?")
    )
}

pub fn controller_kind(pod: &Pod) -> Option<&str> {
    pod.metadata
        .owner_references
        .as_ref()?
        .iter()
        .find(|o| o.controller == Some(true))
        .map(|o| o.kind.as_str())
}

pub fn is_daemonset(pod: &Pod) -> bool {
    controller_kind(pod) == Some("DaemonSet")
}

/// Static pods as the API shows them: the kubelet owns them, eviction
/// cannot move them.
pub fn is_mirror(pod: &Pod) -> bool {
    pod.metadata
        .annotations
        .as_ref()
        .is_some_and(|a| a.contains_key("kubernetes.io/config.mirror"))
}

pub fn is_host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

pub fn is_finished(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    matches!(phase, Some("Succeeded") | Some("Failed"))
}

pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub fn ip(pod: &Pod) -> Option<Ipv4Addr> {
    pod_ips(pod).next()
}

pub fn node_ready(node: &Node) -> bool {
    node.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

pub async fn get_node(ctx: &Context, node: &str) -> Result<Node> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    api.get_opt(node)
        .await
        .map_err(kube_err(format!("reading node {node}")))?
        .ok_or_else(|| Error::Migration(format!("node {node} does not exist (any more)")))
}

/// The node's share of the Cilium pool: what the guide checks with
/// `kubectl get ciliumnode $NODE -o jsonpath='{.spec.ipam.podCIDRs[0]}'`.
pub async fn cilium_cidrs(ctx: &Context, node: &str) -> Result<Vec<Ipv4Net>> {
    let api: Api<CiliumNode> = Api::all(ctx.client.clone());
    let Some(cn) = api
        .get_opt(node)
        .await
        .map_err(kube_err(format!("reading CiliumNode {node}")))?
    else {
        return Ok(Vec::new());
    };
    Ok(cn
        .spec
        .ipam
        .pod_cidrs
        .iter()
        .filter_map(|c| c.parse().ok())
        .collect())
}

/// The node's Cilium agent pod (at most one is expected).
pub async fn cilium_agent(ctx: &Context, node: &str) -> Result<Option<Pod>> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), &ctx.options.cilium_namespace);
    let params = ListParams::default()
        .labels(&ctx.options.cilium_selector)
        .fields(&format!("spec.nodeName={node}"));
    let mut pods = api
        .list(&params)
        .await
        .map_err(kube_err(format!("listing Cilium agent pods on {node}")))?
        .items;
    // A terminating pod next to its replacement: the live one counts.
    pods.sort_by_key(|p| p.metadata.deletion_timestamp.is_some());
    Ok(pods.into_iter().next())
}

/// A wait longer than this prints where it is, this often.
const WAIT_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// Polls `probe` until it returns `Some`, or fails with `what` after
/// `timeout`, naming what was last seen; a long wait prints what it saw
/// last and the time left every few seconds.
pub async fn wait_for<T, F, Fut>(
    ctx: &Context,
    timeout: Duration,
    what: &str,
    mut probe: F,
) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Result<T, String>>>,
{
    let started = tokio::time::Instant::now();
    let deadline = started + timeout;
    let mut said = started;
    loop {
        ctx.check_lease()?;
        let last = match probe().await? {
            Ok(done) => return Ok(done),
            Err(last) => last,
        };
        let now = tokio::time::Instant::now();
        if now - said >= WAIT_PROGRESS_EVERY && now < deadline {
            said = now;
            let left = std::time::Duration::from_secs((deadline - now).as_secs());
            eprintln!(
                "crossover: waiting for {what}: {last} ({} left)",
                humantime::format_duration(left)
            );
        }
        if now >= deadline {
            return Err(Error::Migration(format!(
                "timed out after {}s waiting for {what}: {last}",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(ctx.options.poll).await;
    }
}

/// How many nodes other than `node` the cluster has.
pub async fn other_nodes(ctx: &Context, node: &str) -> Result<usize> {
    let api: Api<Node> = Api::all(ctx.client.clone());
    Ok(api
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing nodes"))?
        .items
        .iter()
        .filter(|n| n.metadata.name.as_deref() != Some(node))
        .count())
}
