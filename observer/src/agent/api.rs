//! The agent's versioned JSON API. `v1` is what `crossover loss` and the
//! migration driver read; fields are only ever added within a version.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    cluster::index::Identity,
    datapath::{Counters, FlowRecord, PeerRecord},
    loss::{LossRow, client::Client, delivery::NodeView},
};

pub const PEERS_PATH: &str = "/api/v1/peers";
pub const FLOWS_PATH: &str = "/api/v1/flows";
pub const CONNECTIONS_PATH: &str = "/api/v1/connections";
pub const LOSS_PATH: &str = "/api/v1/loss";
pub use crate::loss::reading::READING_PATH;
pub const STATUS_PATH: &str = "/api/v1/status";

/// The signals one agent measures alone (handshake, retransmit, probes)
/// over its own window, towards every peer. Delivery needs both ends: a
/// reader computes it from every agent's `/api/v1/reading`.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossReport {
    pub version: u32,
    pub node: String,
    pub window_seconds: f64,
    pub rows: Vec<LossRow>,
}

/// The flow table, every address named.
#[derive(Serialize)]
pub struct FlowsReport {
    pub version: u32,
    pub node: String,
    pub taken_ns: u64,
    pub counters: Counters,
    pub flows: Vec<AttributedFlow>,
}

#[derive(Serialize)]
pub struct AttributedFlow {
    #[serde(flatten)]
    pub flow: FlowRecord,
    pub src_is: Identity,
    pub dst_is: Identity,
}

/// One agent's underlay counters per peer: half of every delivery figure,
/// and the TCP events of the handshake and retransmit signals.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeersReport {
    pub version: u32,
    pub node: String,
    pub underlay: Ipv4Addr,
    /// CLOCK_MONOTONIC of the reading on the agent's node.
    pub taken_ns: u64,
    /// Overlays, directions and networks by name; a name this version
    /// does not know makes the whole report refused, never guessed.
    pub peers: Vec<PeerRecord>,
}

impl PeersReport {
    /// A view of this report, for [`crate::loss::delivery::deliveries`].
    pub fn view(&self) -> NodeView<'_> {
        NodeView {
            name: &self.node,
            underlay: self.underlay,
            peers: &self.peers,
        }
    }
}

/// Every agent's peers report at once, over `client`'s kept-alive
/// connections, checked against this version; in the order asked.
pub async fn fetch_peers(client: &Client, agents: &[String]) -> Result<Vec<PeersReport>> {
    let mut reports: Vec<Option<Result<PeersReport>>> = (0..agents.len()).map(|_| None).collect();
    let asks = agents
        .iter()
        .enumerate()
        .map(|(i, a)| (i, a.clone(), PEERS_PATH.to_string()));
    client
        .each(asks, "peers report", |i, r: Result<PeersReport>| {
            reports[i] = Some(r.and_then(|r| check_version(&agents[i], r.version).map(|()| r)));
        })
        .await;
    reports
        .into_iter()
        .map(|r| r.expect("every agent answered or failed"))
        .collect()
}

fn check_version(agent: &str, version: u32) -> Result<()> {
    if version == 1 {
        return Ok(());
    }
    Err(Error::Agent {
        agent: agent.into(),
        reason: format!("speaks API version {version}, not 1"),
    })
}
