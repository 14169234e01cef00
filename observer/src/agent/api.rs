//! The agent's versioned JSON API. `v1` is what `crossover loss` and the
//! migration driver read; fields are only ever added within a version.
use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use crate::{
    Error, Result,
    cluster::index::Identity,
    datapath::{Counters, FlowRecord, PeerRecord},
    loss::{LossRow, delivery::NodeView},
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

/// One agent's peers report, checked against this version.
pub fn fetch_peers(agent: &str, timeout: Duration) -> Result<PeersReport> {
    fetch_peers_about(agent, None, timeout)
}

/// The same, with only its counters about `about` when given.
pub fn fetch_peers_about(
    agent: &str,
    about: Option<Ipv4Addr>,
    timeout: Duration,
) -> Result<PeersReport> {
    let path = match about {
        Some(addr) => format!("{PEERS_PATH}?peer={addr}"),
        None => PEERS_PATH.to_string(),
    };
    let report: PeersReport = get_json(agent, &path, "peers report", timeout)?;
    check_version(agent, report.version)?;
    Ok(report)
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

fn get_json<T: serde::de::DeserializeOwned>(
    agent: &str,
    path: &str,
    what: &str,
    timeout: Duration,
) -> Result<T> {
    let url = format!("{}{}", agent.trim_end_matches('/'), path);
    let fail = |reason: String| Error::Agent {
        agent: agent.into(),
        reason,
    };
    let config = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .build();
    ureq::Agent::new_with_config(config)
        .get(&url)
        .call()
        .map_err(|e| fail(format!("GET {url}: {e}")))?
        .body_mut()
        .read_json()
        .map_err(|e| fail(format!("{url} is not a v1 {what}: {e}")))
}
