//! The agent's versioned JSON API. `v1` is what `crossover loss` and the
//! migration driver read; fields are only ever added within a version.
use std::{net::Ipv4Addr, time::Duration};

use serde::{Deserialize, Serialize};

use super::window::{ALL, LossRow};
use crate::{
    Error, Result,
    cluster::index::Identity,
    datapath::{Counters, FlowRecord, PeerRecord},
    delivery::NodeView,
};

pub const PEERS_PATH: &str = "/api/v1/peers";
pub const FLOWS_PATH: &str = "/api/v1/flows";
pub const CONNECTIONS_PATH: &str = "/api/v1/connections";
pub const LOSS_PATH: &str = "/api/v1/loss";
pub const STATUS_PATH: &str = "/api/v1/status";

/// The loss matrix from one agent's side over its current window.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LossReport {
    pub version: u32,
    pub node: String,
    pub window_seconds: f64,
    pub rows: Vec<LossRow>,
    /// Peer agents whose counters could not be read at the last sample:
    /// pairs towards them are missing from `rows`, not lossless.
    pub unreachable: Vec<String>,
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

/// One agent's underlay counters per peer: half of every delivery figure.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeersReport {
    pub version: u32,
    pub node: String,
    pub underlay: Ipv4Addr,
    /// CLOCK_MONOTONIC of the reading on the agent's node.
    pub taken_ns: u64,
    pub peers: Vec<PeerCount>,
}

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct PeerCount {
    pub peer: Ipv4Addr,
    pub overlay: String,
    /// "egress": sent to the peer; "ingress": received from it.
    pub direction: String,
    /// Networks of the inner packets' ends. Absent from agents before
    /// delivery per network pair: "all", and such a peer's pairs are
    /// compared per overlay only.
    #[serde(default = "all")]
    pub src_net: String,
    #[serde(default = "all")]
    pub dst_net: String,
    pub packets: u64,
    pub bytes: u64,
}

impl From<&PeerRecord> for PeerCount {
    fn from(p: &PeerRecord) -> Self {
        PeerCount {
            peer: p.peer,
            overlay: p.overlay.into(),
            direction: p.direction.into(),
            src_net: p.src_net.into(),
            dst_net: p.dst_net.into(),
            packets: p.packets,
            bytes: p.bytes,
        }
    }
}

impl PeersReport {
    /// Back into datapath records; labels this version does not know are
    /// refused rather than guessed.
    pub fn records(&self) -> Result<Vec<PeerRecord>, String> {
        let known = |value: &str, all: &[&'static str]| {
            all.iter()
                .copied()
                .find(|l| *l == value)
                .ok_or_else(|| format!("unknown label {value:?} (expected one of {all:?})"))
        };
        let overlays: Vec<&'static str> = observer_ebpf::Overlay::ALL
            .iter()
            .map(|o| o.label())
            .collect();
        let directions: Vec<&'static str> = observer_ebpf::Direction::ALL
            .iter()
            .map(|d| d.label())
            .collect();
        let nets: Vec<&'static str> = observer_ebpf::Net::ALL
            .iter()
            .map(|n| n.label())
            .chain([ALL])
            .collect();
        self.peers
            .iter()
            .map(|p| {
                Ok(PeerRecord {
                    peer: p.peer,
                    overlay: known(&p.overlay, &overlays)?,
                    direction: known(&p.direction, &directions)?,
                    src_net: known(&p.src_net, &nets)?,
                    dst_net: known(&p.dst_net, &nets)?,
                    packets: p.packets,
                    bytes: p.bytes,
                })
            })
            .collect()
    }
}

/// Views over several agents' reports, for [`crate::delivery::deliveries`].
pub fn views<'a>(reports: &'a [(PeersReport, Vec<PeerRecord>)]) -> Vec<NodeView<'a>> {
    reports
        .iter()
        .map(|(report, records)| NodeView {
            name: &report.node,
            underlay: report.underlay,
            peers: records,
        })
        .collect()
}

fn all() -> String {
    ALL.into()
}

/// One agent's peers report, checked against this version.
pub fn fetch_peers(agent: &str, timeout: Duration) -> Result<(PeersReport, Vec<PeerRecord>)> {
    fetch_peers_about(agent, None, timeout)
}

/// The same, with only its counters about `about` when given.
pub fn fetch_peers_about(
    agent: &str,
    about: Option<Ipv4Addr>,
    timeout: Duration,
) -> Result<(PeersReport, Vec<PeerRecord>)> {
    let path = match about {
        Some(addr) => format!("{PEERS_PATH}?peer={addr}"),
        None => PEERS_PATH.to_string(),
    };
    let report: PeersReport = get_json(agent, &path, "peers report", timeout)?;
    check_version(agent, report.version)?;
    let records = report.records().map_err(|reason| Error::Agent {
        agent: agent.into(),
        reason,
    })?;
    Ok((report, records))
}

/// One agent's loss report over its current window, checked against this
/// version.
pub fn fetch_loss(agent: &str, timeout: Duration) -> Result<LossReport> {
    let report: LossReport = get_json(agent, LOSS_PATH, "loss report", timeout)?;
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
