//! The agent's active probes: a responder on the host network (so every
//! node answers on its `flannel.1` and `cilium_host` addresses, one per
//! overlay) and a prober towards its peers' overlay addresses and probe
//! pods, planned by the probe mesh ([`crate::probe::mesh`]) within a budget
//! of packets a second and kept current with the view.
use std::{
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Instant,
};

use observer_ebpf::Net;
use tokio::sync::watch;

use super::view::View;
use crate::{
    Result,
    loss::LossRow,
    probe::{
        MeshConfig, ProbeStats, Prober, ProberConfig, Responder, ResponderConfig,
        ResponderCounters, Schedule, Target,
        mesh::{self, Summary},
    },
    shape::Role,
};

pub struct Probing {
    pub stats: ProbeStats,
    pub responder: Arc<ResponderCounters>,
    node: String,
    port: u16,
    mesh: MeshConfig,
    schedule: watch::Sender<Schedule>,
    /// How the budget is spent now, and the view it was planned from
    /// (held, so a view planned once is known by its address).
    summary: Mutex<Option<(Arc<View>, Summary)>>,
    // Held so the prober runs as long as the agent.
    _prober: Prober,
}

/// `--probe-budget`: packets a second, more than zero.
pub fn parse_budget(text: &str) -> std::result::Result<f64, String> {
    let budget: f64 = text
        .parse()
        .map_err(|_| format!("{text:?}: expected a number of packets a second, e.g. 200"))?;
    if !(budget.is_finite() && budget > 0.0 && budget <= mesh::MAX_BUDGET) {
        return Err(format!(
            "{text:?}: expected more than 0 and at most {} packets a second \
             (--probe-rate 0 turns probing off)",
            mesh::MAX_BUDGET
        ));
    }
    Ok(budget)
}

impl Probing {
    /// Binds the responder on `port` (all addresses) and starts the prober
    /// for `node`: `rate` probes a second per target of a node under
    /// migration, `budget` packets a second in all. Targets come with
    /// [`Probing::follow`].
    pub async fn start(
        node: String,
        port: u16,
        rate: f64,
        budget: f64,
        window: std::time::Duration,
    ) -> Result<Self> {
        let mesh = MeshConfig {
            budget,
            rate,
            ..MeshConfig::default()
        };
        mesh.validate()?;
        let responder = Responder::bind(ResponderConfig {
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
            ..ResponderConfig::default()
        })
        .await?;
        let counters = responder.counters();
        tokio::spawn(responder.run(std::future::pending()));
        let stats = ProbeStats::new(window);
        let (schedule, rx) = watch::channel(Schedule::default());
        let prober = Prober::spawn(
            ProberConfig {
                rate,
                signals: mesh.signals.clone(),
                ..ProberConfig::default()
            },
            stats.clone(),
            rx,
        )?;
        Ok(Probing {
            stats,
            responder: counters,
            node,
            port,
            mesh,
            schedule,
            summary: Mutex::new(None),
            _prober: prober,
        })
    }

    /// Plans the probes for `view` and hands them to the prober when they
    /// changed; how the budget is spent is printed when the nodes under
    /// migration, the coverage or the rotation's signals change. A view
    /// already planned (the sampler calls this every sample) costs nothing.
    pub fn follow(&self, view: &Arc<View>) {
        let mut summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        if summary.as_ref().is_some_and(|(v, _)| Arc::ptr_eq(v, view)) {
            return;
        }
        let targets = targets(view, self.port);
        let nodes: Vec<&str> = view.shape.nodes.iter().map(|n| n.name.as_str()).collect();
        let plan = mesh::plan(&self.node, &nodes, &targets, &view.focus, &self.mesh);
        let news = |(_, old): &(Arc<View>, Summary)| {
            (&old.focus, old.coverage, &old.rotation_signals)
                != (
                    &plan.summary.focus,
                    plan.summary.coverage,
                    &plan.summary.rotation_signals,
                )
        };
        if summary.as_ref().is_none_or(news) {
            eprintln!("crossover: {}", plan.summary);
        }
        // Sent under the lock: a plan of an older view never overtakes
        // the newer one's.
        self.schedule.send_if_modified(|current| {
            let changed = *current != plan.schedule;
            if changed {
                *current = plan.schedule;
            }
            changed
        });
        *summary = Some((view.clone(), plan.summary));
    }

    /// How the budget is spent now; none before the first plan.
    pub fn summary(&self) -> Option<Summary> {
        let summary = self.summary.lock().unwrap_or_else(|e| e.into_inner());
        summary.as_ref().map(|(_, s)| s.clone())
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
                mtu: w.mtu,
            })
            .collect()
    }
}

/// Every peer's overlay addresses, where its agent's responder answers
/// over that overlay (peers whose agent pod is Ready, with Kubernetes;
/// every node of a shape file), and every ready probe pod on a peer (over
/// the overlay of its network).
pub fn targets(view: &View, port: u16) -> Vec<Target> {
    let role_of = |addr| {
        view.shape
            .networks
            .iter()
            .find(|n| n.cidrs.iter().any(|c| c.contains(&addr)))
            .map(|n| n.role)
    };
    let local = view.shape.local_node.as_deref();
    let ready: std::collections::HashSet<&str> = view
        .peers
        .iter()
        .filter(|p| p.ready)
        .map(|p| p.node.as_str())
        .collect();
    let mut out = Vec::new();
    let peers = view
        .shape
        .nodes
        .iter()
        .filter(|n| Some(n.name.as_str()) != local);
    for node in peers.filter(|n| ready.contains(n.name.as_str())) {
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
