//! The agent's active probes: a responder on the host network (so every
//! node answers on its `flannel.1` and `cilium_host` addresses, one per
//! overlay) and a prober towards every peer's overlay addresses and probe
//! pods, kept current with the view.
use std::{collections::BTreeSet, net::SocketAddr, sync::Arc, time::Instant};

use observer_ebpf::Net;
use tokio::sync::watch;

use super::view::View;
use crate::{
    Result,
    loss::LossRow,
    probe::{
        ProbeStats, Prober, ProberConfig, Responder, ResponderConfig, ResponderCounters, Target,
    },
    shape::Role,
};

pub struct Probing {
    pub stats: ProbeStats,
    pub responder: Arc<ResponderCounters>,
    port: u16,
    targets: watch::Sender<Vec<Target>>,
    // Held so the prober runs as long as the agent.
    _prober: Prober,
}

impl Probing {
    /// Binds the responder on `port` (all addresses) and starts the
    /// prober, `rate` probes a second per target; targets come with
    /// [`Probing::follow`].
    pub async fn start(port: u16, rate: f64, window: std::time::Duration) -> Result<Self> {
        let responder = Responder::bind(ResponderConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
            ..ResponderConfig::default()
        })
        .await?;
        let counters = responder.counters();
        tokio::spawn(responder.run(std::future::pending()));
        let stats = ProbeStats::new(window);
        let (targets, rx) = watch::channel(Vec::new());
        let prober = Prober::spawn(
            ProberConfig {
                rate,
                ..ProberConfig::default()
            },
            stats.clone(),
            rx,
        )?;
        Ok(Probing {
            stats,
            responder: counters,
            port,
            targets,
            _prober: prober,
        })
    }

    /// `answering`: peers whose agent answered the last sample. Their
    /// responders run in the agent, so probing a peer whose agent is down
    /// or not started yet would measure the agent, not the network.
    pub fn follow(&self, view: &View, answering: &BTreeSet<String>) {
        let wanted = targets(view, self.port, answering);
        self.targets.send_if_modified(|current| {
            let changed = *current != wanted;
            if changed {
                *current = wanted;
            }
            changed
        });
    }

    /// The probes' window as loss rows: sent is what resolved (answered or
    /// timed out), so probes in flight never count as lost; refused probes
    /// (nothing listens) are apart.
    pub fn loss(&self, node: &str) -> Vec<LossRow> {
        self.stats
            .window(Instant::now())
            .into_iter()
            .map(|w| LossRow {
                node: node.into(),
                peer_node: w.key.peer_node.clone(),
                overlay: w.key.overlay,
                src_net: Net::Host,
                dst_net: w.key.dst_net,
                signal: w.key.signal.into(),
                sent: w.received + w.lost,
                lost: w.lost,
                refused: w.refused,
                seconds: w.seconds,
            })
            .collect()
    }
}

/// Every answering peer's overlay addresses (its agent's responder answers
/// there, over that overlay) and every ready probe pod on a peer (over the
/// overlay of its network).
pub fn targets(view: &View, port: u16, answering: &BTreeSet<String>) -> Vec<Target> {
    let role_of = |addr| {
        view.shape
            .networks
            .iter()
            .find(|n| n.cidrs.iter().any(|c| c.contains(&addr)))
            .map(|n| n.role)
    };
    let local = view.shape.local_node.as_deref();
    let mut out = Vec::new();
    let peers = view
        .shape
        .nodes
        .iter()
        .filter(|n| Some(n.name.as_str()) != local);
    for node in peers.filter(|n| answering.contains(&n.name)) {
        for &addr in &node.overlay_addrs {
            if let Some(role) = role_of(addr) {
                out.push(Target {
                    peer_node: node.name.clone(),
                    overlay: role.overlay(),
                    dst_net: Net::Host,
                    addr,
                    port,
                });
            }
        }
    }
    for pod in &view.probe_pods {
        if let Some(role) = role_of(pod.addr) {
            out.push(Target {
                peer_node: pod.node.clone(),
                overlay: role.overlay(),
                dst_net: match role {
                    Role::Legacy => Net::Legacy,
                    Role::Cilium => Net::Cilium,
                },
                addr: pod.addr,
                port,
            });
        }
    }
    out
}
