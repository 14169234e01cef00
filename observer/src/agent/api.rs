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

/// A page of the flow table, every address named.
#[derive(Serialize)]
pub struct FlowsReport {
    pub version: u32,
    pub node: String,
    pub taken_ns: u64,
    pub counters: Counters,
    pub flows: Vec<AttributedFlow>,
    /// Entries of the table this page read, kept by the filters or not.
    pub scanned: usize,
    /// Pass as `continue=` for the next page; absent on the last.
    #[serde(rename = "continue", skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
}

/// Entries a page reads unless `limit` says otherwise.
pub const DEFAULT_FLOW_PAGE: usize = 1000;

/// `/api/v1/flows`' query: a page of the table and filters on it, as
/// given (strings, so every bad value is named in the 400).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FlowsQuery {
    pub limit: Option<String>,
    #[serde(rename = "continue")]
    pub next: Option<String>,
    /// A peer node, by name or underlay address.
    pub peer: Option<String>,
    /// A pod (or any address) at either end.
    pub pod: Option<Ipv4Addr>,
    pub src_net: Option<String>,
    pub dst_net: Option<String>,
    pub point: Option<String>,
}

/// [`FlowsQuery`] checked.
#[derive(Debug)]
pub struct FlowsRequest {
    pub limit: usize,
    pub from: Option<u32>,
    pub peer: Option<Ipv4Addr>,
    pub pod: Option<Ipv4Addr>,
    pub src_net: Option<observer_ebpf::Net>,
    pub dst_net: Option<observer_ebpf::Net>,
    pub point: Option<observer_ebpf::Point>,
}

impl FlowsQuery {
    /// `peer_addr` resolves a node name to its underlay address.
    pub fn check(
        self,
        peer_addr: impl Fn(&str) -> Option<Ipv4Addr>,
    ) -> std::result::Result<FlowsRequest, String> {
        let max = crate::datapath::MAX_PAGE;
        let limit = match self.limit {
            None => DEFAULT_FLOW_PAGE,
            Some(text) => match text.parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => n,
                _ => return Err(format!("limit={text:?}: expected 1 to {max} entries")),
            },
        };
        let from = match self.next {
            None => None,
            Some(text) => Some(text.parse::<u32>().map_err(|_| {
                format!("continue={text:?}: not a token from a previous page's \"continue\"")
            })?),
        };
        let peer = match self.peer {
            None => None,
            Some(text) => Some(
                text.parse::<Ipv4Addr>()
                    .ok()
                    .or_else(|| peer_addr(&text))
                    .ok_or_else(|| format!("peer={text:?}: neither a node nor an IPv4 address"))?,
            ),
        };
        let net = |what: &str, text: Option<String>| match text {
            None => Ok(None),
            Some(text) => observer_ebpf::Net::from_label(&text)
                .map(Some)
                .ok_or_else(|| {
                    format!("{what}={text:?}: expected external, legacy, cilium, host or unknown")
                }),
        };
        let point = match self.point {
            None => None,
            Some(text) => Some(observer_ebpf::Point::from_label(&text).ok_or_else(|| {
                format!("point={text:?}: expected underlay, overlay, host or pod")
            })?),
        };
        Ok(FlowsRequest {
            limit,
            from,
            peer,
            pod: self.pod,
            src_net: net("src_net", self.src_net)?,
            dst_net: net("dst_net", self.dst_net)?,
            point,
        })
    }
}

impl FlowsRequest {
    pub fn keeps(&self, flow: &FlowRecord) -> bool {
        self.peer.is_none_or(|p| flow.peer == Some(p))
            && self.pod.is_none_or(|a| flow.src == a || flow.dst == a)
            && self.src_net.is_none_or(|n| flow.src_net == n)
            && self.dst_net.is_none_or(|n| flow.dst_net == n)
            && self.point.is_none_or(|p| flow.point == p)
    }
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
    /// This node's hooks that run behind another program, as last checked
    /// (absent when none, and from agents that predate it).
    #[serde(
        default,
        skip_serializing_if = "crate::loss::blind::BlindHooks::is_empty"
    )]
    pub blind: crate::loss::blind::BlindHooks,
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
