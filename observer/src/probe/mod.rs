//! Active probes. Passive counters say nothing about a node pair that
//! carries no traffic; probes make every pair carry some. Each agent probes
//! its peers over both overlays (their `flannel.1` and `cilium_host`
//! addresses, and probe pods of either network), with UDP echoes, TCP
//! handshakes and large UDP echoes at the route's MTU (MTU black holes,
//! with a ladder of sizes to find the one that fits), and keeps loss and
//! RTT per peer node, overlay, network answering and signal. Which peers, and how often, is the probe mesh's
//! plan: the node under migration steadily, the rest of the cluster in
//! rotation, within a budget of packets a second.
//!
//! * [`wire`]: the probe datagram.
//! * [`responder`]: UDP echo and TCP accept; `crossover probe` runs it alone.
//! * [`mesh`]: the plan: focus, rotation, budget.
//! * [`prober`]: the probes, towards a schedule replaceable at runtime.
//! * [`stats`]: totals and sliding windows, the API the agent reads.
//! * [`metrics`]: their Prometheus families.
//!
//! The agent wires it like this (its handlers call `stats.totals()` and
//! `stats.window(Instant::now())`, and [`metrics::write`]):
//!
//! ```no_run
//! # async fn agent() -> observer::Result<()> {
//! use observer::probe::{ProbeStats, Prober, ProberConfig, Responder, ResponderConfig, Target};
//! let responder = Responder::bind(ResponderConfig::default()).await?;
//! let counters = responder.counters();
//! tokio::spawn(responder.run(std::future::pending()));
//! let stats = ProbeStats::new(observer::probe::stats::DEFAULT_WINDOW);
//! let (targets, watched) = tokio::sync::watch::channel(Vec::<Target>::new());
//! let prober = Prober::spawn(ProberConfig::default(), stats.clone(), watched)?;
//! // When peers or their addresses change:
//! targets.send_replace(vec![/* one Target per peer address */]);
//! # prober.stop().await
//! # }
//! ```
pub mod mesh;
pub mod metrics;
pub mod prober;
pub mod responder;
pub mod stats;
pub mod wire;

use std::net::SocketAddr;

use clap::Args;
use tokio::signal::unix::{SignalKind, signal};

pub use self::{
    mesh::{MeshConfig, Plan},
    prober::{Prober, ProberConfig, Schedule, Sweep, Target},
    responder::{Responder, ResponderConfig, ResponderCounters, ResponderTotals},
    stats::{PathMtu, Probe, ProbeStats, Quantiles, SeriesKey, Totals, Window},
};
use crate::{Error, Result};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Address for the UDP echo and the TCP accept, both on this port.
    #[arg(long, default_value = "0.0.0.0:9191")]
    pub listen: SocketAddr,
    /// TCP connections served at once; more are closed at once.
    #[arg(long, default_value_t = ResponderConfig::default().max_connections)]
    pub max_connections: usize,
}

/// `crossover probe`: the responder alone, for a probe DaemonSet whose pods
/// take their address from the node's CNI, legacy or Cilium.
pub async fn run(args: ProbeArgs) -> Result<()> {
    let responder = Responder::bind(ResponderConfig {
        listen: args.listen,
        max_connections: args.max_connections,
        ..ResponderConfig::default()
    })
    .await?;
    let counters = responder.counters();
    let mut sigint = signal(SignalKind::interrupt()).map_err(|e| Error::io("SIGINT handler", e))?;
    let mut sigterm =
        signal(SignalKind::terminate()).map_err(|e| Error::io("SIGTERM handler", e))?;
    eprintln!(
        "crossover: probe responder on {} (UDP echo, TCP accept)",
        responder.local_addr()?
    );
    responder
        .run(async {
            tokio::select! {
                _ = sigint.recv() => {}
                _ = sigterm.recv() => {}
            }
        })
        .await;
    let t = counters.totals();
    let refused: u64 = t.refused.iter().map(|(_, n)| n).sum();
    eprintln!(
        "crossover: probe responder stopped: {} UDP echoes, {} TCP connections ({} over the cap), \
         {refused} datagrams refused",
        t.udp_replies, t.tcp_accepted, t.tcp_over_cap
    );
    Ok(())
}
