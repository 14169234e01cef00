//! The agent's versioned JSON API. `v1` is what `crossover loss` and the
//! migration driver read; fields are only ever added within a version.
use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

use crate::{datapath::PeerRecord, delivery::NodeView};

pub const PEERS_PATH: &str = "/api/v1/peers";
pub const FLOWS_PATH: &str = "/api/v1/flows";
pub const CONNECTIONS_PATH: &str = "/api/v1/connections";

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
    pub packets: u64,
    pub bytes: u64,
}

impl From<&PeerRecord> for PeerCount {
    fn from(p: &PeerRecord) -> Self {
        PeerCount {
            peer: p.peer,
            overlay: p.overlay.into(),
            direction: p.direction.into(),
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
        self.peers
            .iter()
            .map(|p| {
                Ok(PeerRecord {
                    peer: p.peer,
                    overlay: known(&p.overlay, &overlays)?,
                    direction: known(&p.direction, &directions)?,
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
