//! One row of the loss matrix: what one node sent towards a peer on one
//! overlay and network pair, by one signal, and how much of it was lost.
use observer_ebpf::{Net, Overlay};
use serde::{Deserialize, Serialize};

use super::Signal;

/// The node name standing for every node: both ends of a cluster total,
/// one end of a focus node's row summed over its peers ([`super::cluster`]).
/// Never a Kubernetes node name (names are DNS subdomains).
pub const CLUSTER: &str = "*";

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct LossRow {
    pub node: String,
    pub peer_node: String,
    pub overlay: Overlay,
    pub src_net: Net,
    pub dst_net: Net,
    pub signal: Signal,
    pub sent: u64,
    pub lost: u64,
    /// Handshakes or probes the peer refused (nothing listening: TCP RST,
    /// ICMP port unreachable): in neither `sent` nor `lost`.
    #[serde(default)]
    pub refused: u64,
    /// Seconds the figures cover (less than the window while it fills).
    pub seconds: f64,
    /// The [`Signal::Mtu`] rows only: what the large probes know of the
    /// path's MTU (the size probed, the size that fits).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<super::mtu::PathMtu>,
}

/// A row's identity, borrowed: sorting and merging compare these, never
/// build strings.
pub type RowKey<'a> = (&'a str, &'a str, Signal, Overlay, Net, Net);

impl LossRow {
    pub fn ratio(&self) -> Option<f64> {
        (self.sent > 0).then(|| self.lost as f64 / self.sent as f64)
    }

    pub fn key(&self) -> RowKey<'_> {
        (
            &self.node,
            &self.peer_node,
            self.signal,
            self.overlay,
            self.src_net,
            self.dst_net,
        )
    }

    /// Nothing counted yet, between `node` and `peer`, on `like`'s signal,
    /// overlay and networks: what a sum over pairs starts from.
    pub fn sum_like(node: String, peer: String, like: &LossRow) -> LossRow {
        LossRow {
            node,
            peer_node: peer,
            sent: 0,
            lost: 0,
            refused: 0,
            seconds: 0.0,
            mtu: None,
            ..like.clone()
        }
    }

    /// Adds another pair's figures to this sum.
    pub fn add(&mut self, other: &LossRow) {
        self.sent += other.sent;
        self.lost += other.lost;
        self.refused += other.refused;
        self.seconds = self.seconds.max(other.seconds);
        self.mtu = super::mtu::PathMtu::merge(self.mtu, other.mtu);
    }

    /// A cluster-wide total: every node at both ends.
    pub fn is_total(&self) -> bool {
        self.node == CLUSTER && self.peer_node == CLUSTER
    }

    /// Worst first: highest ratio, then most lost, then by key.
    pub fn worse(a: &LossRow, b: &LossRow) -> std::cmp::Ordering {
        let ratio = |r: &LossRow| r.ratio().unwrap_or(0.0);
        ratio(b)
            .total_cmp(&ratio(a))
            .then(b.lost.cmp(&a.lost))
            .then_with(|| a.key().cmp(&b.key()))
    }
}
