//! Where the crossover agents are: one URL per node, from the agent pods
//! the API lists, for readers that are not told (`crossover loss` without
//! `--agent`, the migration driver). Two list requests, whatever the
//! cluster's size.
use std::net::Ipv4Addr;

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{Api, Client, api::ListParams};

use crate::{Error, Result};

/// How to find the agents.
#[derive(Clone, Debug)]
pub struct AgentPods<'a> {
    pub namespace: &'a str,
    pub selector: &'a str,
    pub port: u16,
}

/// The agents found, and every node without one (a node nobody measures
/// is named, never taken for lossless).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Found {
    pub urls: Vec<String>,
    /// The node of each URL.
    pub nodes: Vec<String>,
    pub missing: Vec<String>,
}

fn kube_err(context: &str) -> impl FnOnce(kube::Error) -> Error + '_ {
    move |e| Error::Kube {
        context: context.into(),
        reason: e.to_string(),
    }
}

/// One URL per node that runs an agent pod with an address.
pub async fn find(client: &Client, how: &AgentPods<'_>) -> Result<Found> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), how.namespace);
    let pods = pods
        .list(&ListParams::default().labels(how.selector))
        .await
        .map_err(kube_err("listing crossover agent pods"))?
        .items;
    let nodes: Api<Node> = Api::all(client.clone());
    let nodes = nodes
        .list(&ListParams::default())
        .await
        .map_err(kube_err("listing nodes"))?
        .items;
    let ip = |p: &Pod| {
        p.status
            .as_ref()
            .and_then(|s| s.pod_ip.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok())
    };
    let mut found = Found::default();
    for node in nodes.iter().filter_map(|n| n.metadata.name.as_deref()) {
        let on = pods.iter().find(|p| {
            p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(node)
                && p.metadata.deletion_timestamp.is_none()
                && ip(p).is_some()
        });
        match on.and_then(ip) {
            Some(ip) => {
                found.urls.push(format!("http://{ip}:{}", how.port));
                found.nodes.push(node.to_owned());
            }
            None => found
                .missing
                .push(format!("no crossover agent pod on node {node}")),
        }
    }
    Ok(found)
}
