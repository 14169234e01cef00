//! `/api/v1/reading`: one agent's half of a window, as a reader asks for
//! it. Every answer is bounded whatever the cluster's size: totals per
//! overlay and network pair, the counters about the few peers the reader
//! names, sums per group of peers, and the agent's own worst rows.
use std::{collections::BTreeMap, net::Ipv4Addr};

use observer_ebpf::{Direction, Net, Overlay};
use serde::{Deserialize, Serialize};

use super::{
    CLUSTER, LossRow, Signal,
    blind::BlindHooks,
    dropped::DropRow,
    ring::{Key, Tick, key_of},
};
use crate::datapath::PeerCounts;

pub const READING_PATH: &str = "/api/v1/reading";
pub const VERSION: u32 = 1;

/// Peers one request may name.
pub const MAX_NODES: usize = 64;
/// Groups one request may split the peers into.
pub const MAX_GROUPS: u32 = 1024;
/// Worst local rows one request may ask for.
pub const MAX_TOP: usize = 1000;

/// The query string, as sent.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Query {
    /// End of the window, Unix ms: the agent uses the tick at or before.
    pub at: u64,
    /// Length of the window, ms.
    pub window: u64,
    /// Comma-separated node names: their counters in `peers`, their local
    /// rows in `local`. This node's own name means every peer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nodes: Option<String>,
    /// Sums per group of peers: `groups` groups by [`group_of`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub groups: Option<u32>,
    /// With `groups`: the counters about every peer of this group.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<u32>,
    /// Worst local rows to list (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub top: Option<usize>,
    /// Rows with fewer sent are not ranked among the worst (default 20).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_sent: Option<u64>,
}

/// A [`Query`], checked.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub at_ms: u64,
    pub window_ms: u64,
    pub nodes: Vec<String>,
    pub groups: Option<u32>,
    pub group: Option<u32>,
    pub top: usize,
    pub min_sent: u64,
}

impl Query {
    pub fn check(&self) -> Result<Request, String> {
        let nodes: Vec<String> = self
            .nodes
            .as_deref()
            .unwrap_or("")
            .split(',')
            .filter(|n| !n.is_empty())
            .map(str::to_owned)
            .collect();
        if nodes.len() > MAX_NODES {
            return Err(format!(
                "nodes: {} names, at most {MAX_NODES} per request",
                nodes.len()
            ));
        }
        if self.window == 0 {
            return Err("window: must be more than 0 ms".into());
        }
        if let Some(g) = self.groups
            && !(1..=MAX_GROUPS).contains(&g)
        {
            return Err(format!("groups={g}: expected 1 to {MAX_GROUPS}"));
        }
        match (self.groups, self.group) {
            (None, Some(_)) => return Err("group needs groups".into()),
            (Some(n), Some(g)) if g >= n => {
                return Err(format!("group={g}: groups are numbered 0 to {}", n - 1));
            }
            _ => {}
        }
        let top = self.top.unwrap_or(20);
        if top > MAX_TOP {
            return Err(format!("top={top}: at most {MAX_TOP}"));
        }
        Ok(Request {
            at_ms: self.at,
            window_ms: self.window,
            nodes,
            groups: self.groups,
            group: self.group,
            top,
            min_sent: self.min_sent.unwrap_or(20),
        })
    }
}

impl Request {
    /// The ticks of the window, at `interval_ms`: the end at or before
    /// `at`, the start a whole number of ticks before it.
    pub fn ticks(&self, interval_ms: u64) -> (u64, u64) {
        let interval_ms = interval_ms.max(1);
        let to = self.at_ms / interval_ms;
        (to.saturating_sub(self.window_ms.div_ceil(interval_ms)), to)
    }
}

/// The group of a node: the same on every agent and reader, so sums per
/// group from both ends of a pair meet.
pub fn group_of(node: &str, groups: u32) -> u32 {
    // FNV-1a: stable across builds and platforms, unlike std's hasher.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in node.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % u64::from(groups.max(1))) as u32
}

/// Delivery's half at one end, over the window: what this node sent on an
/// overlay and network pair, and what it received.
///
/// `sent` (from the start's late read to the end's early read) against the
/// peer's `received` (early read to late read) brackets every packet in
/// flight: never phantom loss, what a pair is judged by. `sent_all` covers
/// the same instants as `received` (early to late read): summed over many
/// pairs, the bracket's slack would add up and hide loss, so totals
/// compare those instead, uncertain only by what is in flight at the
/// window's two ends.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Half {
    pub overlay: Overlay,
    pub src_net: Net,
    pub dst_net: Net,
    pub sent: u64,
    pub sent_all: u64,
    pub received: u64,
}

impl Half {
    pub fn zero((overlay, src_net, dst_net): (Overlay, Net, Net)) -> Self {
        Half {
            overlay,
            src_net,
            dst_net,
            sent: 0,
            sent_all: 0,
            received: 0,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerHalf {
    pub peer_node: String,
    #[serde(flatten)]
    pub half: Half,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupHalf {
    pub group: u32,
    #[serde(flatten)]
    pub half: Half,
}

/// One agent's answer.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct NodeReading {
    pub version: u32,
    pub node: String,
    pub underlay: Ipv4Addr,
    /// The window's ticks, as Unix ms: equal on every agent of a reading,
    /// or the pairs between them would compare different intervals.
    pub from_ms: u64,
    pub to_ms: u64,
    pub guard_ms: u64,
    /// How far this agent's reads strayed from their ticks (ms).
    pub lateness_ms: u64,
    /// Delivery, summed over every peer that is a node of the cluster.
    pub totals: Vec<Half>,
    /// About the nodes asked for (`nodes`, or every peer).
    pub peers: Vec<PeerHalf>,
    /// Per group of peers (`groups`).
    pub groups: Vec<GroupHalf>,
    /// Local signals (TCP, probes): rows about the nodes asked for, then the
    /// worst others.
    pub local: Vec<LossRow>,
    /// Local signals summed over every peer (`peer_node` is [`CLUSTER`]).
    pub local_totals: Vec<LossRow>,
    /// Local rows neither asked for nor among the worst: not listed.
    pub local_left_out: usize,
    /// This node's hooks that run behind another program, as last checked
    /// (absent from agents that predate it: none known).
    #[serde(default, skip_serializing_if = "BlindHooks::is_empty")]
    pub blind: BlindHooks,
    /// The kernel's drops over the window towards or from the nodes asked
    /// for, then the largest others (`top`).
    #[serde(default)]
    pub drops: Vec<DropRow>,
    /// Drop rows neither asked for nor among the largest.
    #[serde(default)]
    pub drops_left_out: usize,
}

impl NodeReading {
    pub fn seconds(&self) -> f64 {
        self.to_ms.saturating_sub(self.from_ms) as f64 / 1000.0
    }
}

/// What one node knows to answer with, besides its ticks.
pub struct Answerer<'a> {
    pub node: &'a str,
    pub underlay: Ipv4Addr,
    pub guard_ms: u64,
    pub interval_ms: u64,
    /// A peer's node name; `None` for an address that is no node.
    pub name: &'a dyn Fn(Ipv4Addr) -> Option<String>,
    /// The probes' own rows over their window.
    pub probes: Vec<LossRow>,
    /// This node's blind hooks, as last checked.
    pub blind: BlindHooks,
}

/// A counter's window: the sender side from `start`'s late read to `end`'s
/// early read, the receiver side from `start`'s early read to `end`'s late
/// read (see [`super::ring`]). A counter that went backwards (maps
/// recreated) counts from zero.
fn delta(now: u64, before: u64) -> u64 {
    now.checked_sub(before).unwrap_or(now)
}

impl Answerer<'_> {
    pub fn answer(&self, request: &Request, start: &Tick, end: &Tick) -> NodeReading {
        let interval = std::time::Duration::from_millis(self.interval_ms);
        let guard = std::time::Duration::from_millis(self.guard_ms);
        let everyone = request.nodes.iter().any(|n| n == self.node);
        let asked = |peer: &str| everyone || request.nodes.iter().any(|n| n == peer);

        let mut names: BTreeMap<Ipv4Addr, Option<String>> = BTreeMap::new();
        let mut name = |addr: Ipv4Addr| {
            names
                .entry(addr)
                .or_insert_with(|| (self.name)(addr))
                .clone()
        };
        let mut totals: BTreeMap<(Overlay, Net, Net), Half> = BTreeMap::new();
        let mut peers: BTreeMap<(String, Overlay, Net, Net), Half> = BTreeMap::new();
        let mut groups: BTreeMap<(u32, Overlay, Net, Net), Half> = BTreeMap::new();
        let mut tcp: Vec<(String, Key, PeerCounts)> = Vec::new();
        // What the underlay exchanged with each peer, each way, between the
        // early reads (the drops' instants): loss inside the node's base.
        let mut exchanged: BTreeMap<(String, Direction), u64> = BTreeMap::new();
        for record in &end.early {
            let key = key_of(record);
            let Some(peer) = name(record.peer) else {
                continue;
            };
            let before = start.early(&key).map_or(0, |c| c.packets);
            *exchanged
                .entry((peer.clone(), record.direction))
                .or_default() += delta(record.counts.packets, before);
            let (sent, sent_all, received) = match record.direction {
                Direction::Egress => (
                    delta(record.counts.packets, start.late_packets(&key)),
                    delta(end.late_packets(&key), before),
                    0,
                ),
                Direction::Ingress => (0, 0, delta(end.late_packets(&key), before)),
            };
            if record.direction == Direction::Egress {
                let before = start.early(&key).copied().unwrap_or_default();
                let w = record.counts.since(&before);
                if w.segments > 0 || w.retransmits > 0 || w.handshakes() > 0 {
                    tcp.push((peer.clone(), key, w));
                }
            }
            if sent_all == 0 && received == 0 {
                continue;
            }
            let add = |h: &mut Half| {
                h.sent += sent;
                h.sent_all += sent_all;
                h.received += received;
            };
            let (overlay, src, dst) = (record.overlay, record.src_net, record.dst_net);
            let zero = Half::zero((overlay, src, dst));
            add(totals.entry((overlay, src, dst)).or_insert(zero));
            let mut listed = asked(&peer);
            if let Some(n) = request.groups {
                let g = group_of(&peer, n);
                add(groups.entry((g, overlay, src, dst)).or_insert(zero));
                listed |= request.group == Some(g);
            }
            if listed {
                add(peers.entry((peer, overlay, src, dst)).or_insert(zero));
            }
        }

        let seconds = (end.k - start.k) as f64 * interval.as_secs_f64();
        let mut rows = Vec::new();
        for (peer, (_, overlay, _, src, dst), w) in tcp {
            let row = |signal, sent, lost, refused| LossRow {
                node: self.node.to_owned(),
                peer_node: peer.clone(),
                overlay,
                src_net: src,
                dst_net: dst,
                signal,
                sent,
                lost,
                refused,
                seconds,
                mtu: None,
            };
            if w.segments > 0 || w.retransmits > 0 {
                rows.push(row(Signal::Retransmit, w.segments, w.retransmits, 0));
            }
            // A refused handshake reached the peer: not loss, shown apart.
            if w.handshakes() > 0 {
                rows.push(row(
                    Signal::Handshake,
                    w.handshakes_answered + w.handshakes_unanswered,
                    w.handshakes_unanswered,
                    w.handshakes_reset,
                ));
            }
        }
        rows.extend(self.probes.iter().cloned());
        super::mtu::join(
            &mut rows,
            self.node,
            super::mtu::traffic((start, end), &mut name),
            seconds,
        );
        rows.extend(super::dropped::in_node_rows(
            self.node,
            (start, end),
            &mut name,
            &exchanged,
            seconds,
        ));
        let local_totals = local_totals(self.node, &rows);
        // A row is this node's (`node`) but for loss inside it of what a
        // peer sent (`peer_node` is this node): asked for by either end.
        let (mut local, mut rest): (Vec<LossRow>, Vec<LossRow>) = rows
            .into_iter()
            .partition(|r| asked(&r.peer_node) || (r.node != self.node && asked(&r.node)));
        rest.retain(|r| r.sent >= request.min_sent && r.lost > 0);
        rest.sort_by(LossRow::worse);
        let left_out = rest.len().saturating_sub(request.top);
        rest.truncate(request.top);
        local.extend(rest);
        let (drops, drops_left_out) =
            super::dropped::window(self.node, (start, end), &mut name, &asked, request.top);

        NodeReading {
            version: VERSION,
            node: self.node.to_owned(),
            underlay: self.underlay,
            from_ms: start.k * self.interval_ms,
            to_ms: end.k * self.interval_ms,
            guard_ms: self.guard_ms,
            lateness_ms: start
                .lateness_ms(interval, guard)
                .max(end.lateness_ms(interval, guard)),
            totals: totals.into_values().collect(),
            peers: peers
                .into_iter()
                .map(|((peer_node, ..), half)| PeerHalf { peer_node, half })
                .collect(),
            groups: groups
                .into_iter()
                .map(|((group, ..), half)| GroupHalf { group, half })
                .collect(),
            local,
            local_totals,
            local_left_out: left_out,
            blind: self.blind.clone(),
            drops,
            drops_left_out,
        }
    }
}

/// Local rows summed per signal, overlay and network pair.
fn local_totals(node: &str, rows: &[LossRow]) -> Vec<LossRow> {
    let mut sums: BTreeMap<(Signal, Overlay, Net, Net), LossRow> = BTreeMap::new();
    for r in rows {
        sums.entry((r.signal, r.overlay, r.src_net, r.dst_net))
            .or_insert_with(|| LossRow::sum_like(node.to_owned(), CLUSTER.to_owned(), r))
            .add(r);
    }
    sums.into_values().collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::datapath::PeerRecord;

    fn record(peer: u8, direction: Direction, packets: u64, tcp: (u64, u64)) -> PeerRecord {
        PeerRecord {
            peer: Ipv4Addr::new(10, 0, 0, peer),
            overlay: Overlay::Cilium,
            direction,
            src_net: Net::Cilium,
            dst_net: Net::Legacy,
            counts: PeerCounts {
                packets,
                segments: tcp.0,
                retransmits: tcp.1,
                ..PeerCounts::default()
            },
        }
    }

    /// Peer p sends and receives 100 packets a second; 10 of them arrive
    /// after the early read, before the late one.
    fn tick(k: u64) -> Tick {
        let early: Vec<PeerRecord> = (1..=3)
            .flat_map(|p| {
                [
                    record(p, Direction::Egress, k * 100, (k * 50, k)),
                    record(p, Direction::Ingress, k * 100, (0, 0)),
                ]
            })
            .collect();
        let late = early
            .iter()
            .map(|r| {
                let mut r = *r;
                r.counts.packets += 10;
                r
            })
            .collect();
        Tick::new(k, (k * 1000, early), (k * 1000 + 20, late))
    }

    fn answerer(name: &dyn Fn(Ipv4Addr) -> Option<String>) -> Answerer<'_> {
        Answerer {
            node: "n0",
            underlay: Ipv4Addr::new(10, 0, 0, 0),
            guard_ms: 20,
            interval_ms: 1000,
            name,
            probes: Vec::new(),
            blind: Default::default(),
        }
    }

    fn names(addr: Ipv4Addr) -> Option<String> {
        // 10.0.0.3 is no node: in no total.
        (addr.octets()[3] < 3).then(|| format!("n{}", addr.octets()[3]))
    }

    #[test]
    fn the_receiver_side_brackets_the_sender_side() {
        let query = Query {
            at: 20_000,
            window: 10_000,
            nodes: Some("n2".into()),
            top: Some(1),
            min_sent: Some(1),
            ..Query::default()
        };
        let request = query.check().unwrap();
        let a = answerer(&names);
        let reading = a.answer(&request, &tick(10), &tick(20));
        // Sent from 10's late read to 20's early: 1000 - 10; received from
        // 10's early read to 20's late: 1000 + 10. Two nodes' worth.
        assert_eq!(reading.totals.len(), 1);
        assert_eq!(
            (reading.totals[0].sent, reading.totals[0].received),
            (2 * 990, 2 * 1010)
        );
        // The same instants at both ends: early to late read.
        assert_eq!(reading.totals[0].sent_all, 2 * 1010);
        assert_eq!(reading.peers.len(), 1);
        assert_eq!(reading.peers[0].peer_node, "n2");
        assert_eq!(
            (reading.from_ms, reading.to_ms, reading.seconds()),
            (10_000, 20_000, 10.0)
        );
        // Retransmit rows: n2's asked for, the worst other (n1) listed.
        let peers: Vec<_> = reading.local.iter().map(|r| r.peer_node.as_str()).collect();
        assert_eq!(peers, ["n2", "n1"]);
        assert_eq!((reading.local[0].sent, reading.local[0].lost), (500, 10));
        assert_eq!(reading.local_left_out, 0);
        assert_eq!(reading.local_totals[0].peer_node, CLUSTER);
        assert_eq!(reading.local_totals[0].sent, 1000);
    }

    #[test]
    fn groups_sum_their_peers_and_one_group_is_listed() {
        let query = Query {
            at: 20_000,
            window: 10_000,
            groups: Some(4),
            group: Some(group_of("n1", 4)),
            ..Query::default()
        };
        let reading = answerer(&names).answer(&query.check().unwrap(), &tick(10), &tick(20));
        let sent: u64 = reading.groups.iter().map(|g| g.half.sent).sum();
        assert_eq!(sent, 2 * 990);
        assert!(reading.peers.iter().any(|p| p.peer_node == "n1"));
    }

    #[test]
    fn bad_queries_are_named() {
        let bad = |q: Query| q.check().unwrap_err();
        let base = Query {
            at: 1,
            window: 1,
            ..Query::default()
        };
        assert!(
            bad(Query {
                window: 0,
                ..base.clone()
            })
            .contains("window")
        );
        assert!(
            bad(Query {
                group: Some(1),
                ..base.clone()
            })
            .contains("group needs groups")
        );
        assert!(
            bad(Query {
                groups: Some(2),
                group: Some(2),
                ..base.clone()
            })
            .contains("0 to 1")
        );
        assert!(
            bad(Query {
                groups: Some(0),
                ..base.clone()
            })
            .contains("groups=0")
        );
        assert!(
            bad(Query {
                top: Some(5000),
                ..base.clone()
            })
            .contains("top")
        );
        let many = (0..65)
            .map(|i| format!("n{i}"))
            .collect::<Vec<_>>()
            .join(",");
        assert!(
            bad(Query {
                nodes: Some(many),
                ..base
            })
            .contains("at most 64")
        );
    }
}
