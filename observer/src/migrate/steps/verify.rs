//! The guide's check after the agent restart, made exact: a pod on the
//! node has an address from the node's Cilium CIDR, and probes from and to
//! the node are answered on both overlays (a Cilium pod reaches a legacy
//! pod and back).
use crate::{
    Error, Result,
    loss::LossRow,
    migrate::{context::Context, pods},
};

use observer_ebpf::Overlay;

const OVERLAYS: [Overlay; 2] = [Overlay::Legacy, Overlay::Cilium];

/// Which (direction, overlay) lack an answered probe.
fn unanswered(rows: &[LossRow], node: &str) -> Vec<String> {
    let answered = |from_node: bool, overlay: Overlay| {
        rows.iter().any(|r| {
            r.signal.is_probe()
                && r.overlay == overlay
                && (if from_node {
                    r.node == node
                } else {
                    r.peer_node == node
                })
                && r.sent > r.lost
        })
    };
    let mut missing = Vec::new();
    for overlay in OVERLAYS {
        if !answered(true, overlay) {
            missing.push(format!("probes from {node} on the {overlay} overlay"));
        }
        if !answered(false, overlay) {
            missing.push(format!("probes to {node} on the {overlay} overlay"));
        }
    }
    missing
}

pub async fn verify(ctx: &Context, node: &str) -> Result<String> {
    let cilium = pods::cilium_cidrs(ctx, node).await?;
    let on_cilium = pods::on_node(ctx, node)
        .await?
        .into_iter()
        .filter(|p| !pods::is_host_network(p) && pods::is_ready(p))
        .find(|p| pods::ip(p).is_some_and(|ip| cilium.iter().any(|c| c.contains(&ip))));
    let Some(pod) = on_cilium else {
        let cidrs: Vec<String> = cilium.iter().map(|c| c.to_string()).collect();
        return Err(Error::Migration(format!(
            "no Ready pod on {node} has an address from its Cilium CIDR [{}]: the node did not \
             move to Cilium. Is the crossover probe DaemonSet (manifests/base/probe-daemonset.yaml) \
             running there?",
            cidrs.join(", ")
        )));
    };
    let with_cilium = format!(
        "{} has {}",
        pods::name(&pod),
        pods::ip(&pod).unwrap_or([0; 4].into())
    );
    let peers = pods::other_nodes(ctx, node).await?;
    if peers == 0 {
        return Ok(format!("{with_cilium}; no other node to probe"));
    }
    let what = format!("answered probes from and to {node} on both overlays");
    pods::wait_for(ctx, ctx.options.verify_timeout, &what, || async {
        // The agents' own fresh readings, whatever the gate's source.
        let measured = ctx.measure_agents(Some(node)).await?;
        let missing = unanswered(&measured.rows, node);
        Ok(if missing.is_empty() {
            Ok(())
        } else {
            Err(format!("none yet: {}", missing.join(", ")))
        })
    })
    .await?;
    Ok(format!(
        "{with_cilium}; probes answered both ways on both overlays"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(node: &str, peer: &str, overlay: &str, sent: u64, lost: u64) -> LossRow {
        LossRow {
            node: node.into(),
            peer_node: peer.into(),
            overlay: Overlay::from_label(overlay).unwrap(),
            src_net: observer_ebpf::Net::Host,
            dst_net: observer_ebpf::Net::Cilium,
            signal: crate::loss::Signal::ProbeUdp,
            sent,
            lost,
            refused: 0,
            seconds: 10.0,
            mtu: None,
        }
    }

    #[test]
    fn every_direction_and_overlay_needs_an_answered_probe() {
        let mut rows = vec![
            probe("n1", "n2", "legacy", 100, 0),
            probe("n2", "n1", "legacy", 100, 3),
            probe("n1", "n2", "cilium", 100, 0),
            // Everything towards n1 on Cilium was lost.
            probe("n2", "n1", "cilium", 100, 100),
        ];
        assert_eq!(
            unanswered(&rows, "n1"),
            ["probes to n1 on the cilium overlay"]
        );
        rows.push(probe("n3", "n1", "cilium", 50, 1));
        assert!(unanswered(&rows, "n1").is_empty());
    }
}
