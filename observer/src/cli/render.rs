//! Snapshots as tables for people or JSON for programs.
use std::fmt::Write as _;

use std::net::Ipv4Addr;

use observer_ebpf::Point;

use crate::{
    datapath::{FlowRecord, Snapshot},
    shape::ClusterShape,
};

/// What `observe` shows of a snapshot.
#[derive(Clone, Debug, Default)]
pub struct View {
    /// Only flows and counters of this peer (its underlay address).
    pub peer: Option<Ipv4Addr>,
    /// Only flows at this hook point.
    pub point: Option<Point>,
    /// Flows the table lists, worst first; 0: all.
    pub top: usize,
}

impl View {
    /// The snapshot with only what the filters keep, flows worst first.
    pub fn keep(&self, mut snapshot: Snapshot) -> Snapshot {
        if let Some(peer) = self.peer {
            snapshot.flows.retain(|f| f.peer == Some(peer));
            snapshot.peers.retain(|p| p.peer == peer);
        }
        if let Some(point) = self.point {
            snapshot.flows.retain(|f| f.point == point);
        }
        snapshot.flows.sort_by(worse);
        snapshot
    }
}

/// Worst first: retransmitted segments, resets, then the busiest.
fn worse(a: &FlowRecord, b: &FlowRecord) -> std::cmp::Ordering {
    (b.retransmits, b.rsts, b.packets).cmp(&(a.retransmits, a.rsts, a.packets))
}

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    #[default]
    Table,
    Json,
}

/// Peer label: node name when the shape knows the address.
fn peer_name(shape: &ClusterShape, peer: Option<std::net::Ipv4Addr>) -> String {
    match peer {
        None => "-".into(),
        Some(addr) => shape
            .node_by_underlay(addr)
            .map_or(addr.to_string(), |n| n.name.clone()),
    }
}

/// Tables of the peer counters and the first `top` flows (0: all), the
/// rest counted; columns named as the JSON's fields.
pub fn table(snapshot: &Snapshot, shape: &ClusterShape, top: usize) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Underlay traffic per peer node");
    let mut peers = crate::table::new(
        &[
            "peer",
            "overlay",
            "direction",
            "src_net",
            "dst_net",
            "packets",
            "bytes",
        ],
        5,
    );
    for p in &snapshot.peers {
        peers.add_row([
            peer_name(shape, Some(p.peer)),
            p.overlay.to_string(),
            p.direction.to_string(),
            p.src_net.to_string(),
            p.dst_net.to_string(),
            p.counts.packets.to_string(),
            p.counts.bytes.to_string(),
        ]);
    }
    out.push_str(&crate::table::render(&peers));
    let shown = if top == 0 {
        snapshot.flows.len()
    } else {
        top.min(snapshot.flows.len())
    };
    let _ = writeln!(
        out,
        "\nFlows ({}, worst first{})",
        snapshot.flows.len(),
        if shown < snapshot.flows.len() {
            format!(
                ", {} more not shown: --top 0 shows all",
                snapshot.flows.len() - shown
            )
        } else {
            String::new()
        }
    );
    let mut flows = crate::table::new(
        &[
            "point",
            "direction",
            "proto",
            "src",
            "dst",
            "src_net",
            "dst_net",
            "overlay",
            "peer",
            "snat",
            "packets",
            "syns",
            "syn_acks",
            "rsts",
            "retransmits",
        ],
        10,
    );
    for f in &snapshot.flows[..shown] {
        let snat = match (f.snat, f.snat_addr) {
            (observer_ebpf::Snat::Source, Some(addr)) => format!("src={addr}"),
            (observer_ebpf::Snat::Destination, Some(addr)) => format!("dst={addr}"),
            _ => "-".to_string(),
        };
        flows.add_row([
            f.point.to_string(),
            f.direction.to_string(),
            f.proto_name(),
            format!("{}:{}", f.src, f.src_port),
            format!("{}:{}", f.dst, f.dst_port),
            f.src_net.to_string(),
            f.dst_net.to_string(),
            f.overlay.to_string(),
            peer_name(shape, f.peer),
            snat,
            f.packets.to_string(),
            f.syns.to_string(),
            f.syn_acks.to_string(),
            f.rsts.to_string(),
            f.retransmits.to_string(),
        ]);
    }
    out.push_str(&crate::table::render(&flows));
    let problems: Vec<_> = snapshot.counters.iter().filter(|(_, v)| **v != 0).collect();
    let _ = writeln!(out, "\nCounters (not zero)");
    for (name, value) in problems {
        let _ = writeln!(out, "  {name:<26} {value}");
    }
    out
}

/// One snapshot as one line of JSON (a stream of them is NDJSON), its
/// kernel times (CLOCK_MONOTONIC, `*_ns`) also as RFC 3339 wall-clock
/// times: `started`, `finished`, and each flow's `first_seen` and
/// `last_seen`, converted with the offset between the two clocks now.
pub fn json(snapshot: &Snapshot) -> String {
    let mut value = serde_json::to_value(snapshot).expect("snapshots serialize");
    let wall = std::time::SystemTime::now();
    let since_epoch = wall
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos();
    let offset = since_epoch as i128 - crate::datapath::monotonic_ns() as i128;
    let at = |ns: &serde_json::Value| -> serde_json::Value {
        let Some(ns) = ns.as_u64() else {
            return serde_json::Value::Null;
        };
        let unix = offset + ns as i128;
        if unix < 0 {
            return serde_json::Value::Null;
        }
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_nanos(unix as u64);
        humantime::format_rfc3339_nanos(t).to_string().into()
    };
    if let Some(fields) = value.as_object_mut() {
        for (from, to) in [("started_ns", "started"), ("finished_ns", "finished")] {
            let wall = fields.get(from).map(at).unwrap_or_default();
            fields.insert(to.into(), wall);
        }
        for flow in fields
            .get_mut("flows")
            .and_then(|f| f.as_array_mut())
            .into_iter()
            .flatten()
        {
            let Some(flow) = flow.as_object_mut() else {
                continue;
            };
            for (from, to) in [
                ("first_seen_ns", "first_seen"),
                ("last_seen_ns", "last_seen"),
            ] {
                let wall = flow.get(from).map(at).unwrap_or_default();
                flow.insert(to.into(), wall);
            }
        }
    }
    value.to_string()
}

#[cfg(test)]
mod tests {
    use observer_ebpf::{Direction, Net, Overlay, Snat};

    use super::*;
    use crate::datapath::RetiredReport;

    fn flow(peer: u8, point: Point, packets: u64, retransmits: u64) -> FlowRecord {
        FlowRecord {
            src: Ipv4Addr::new(10, 244, 1, 5),
            dst: Ipv4Addr::new(10, 244, 2, peer),
            src_port: 40000 + packets as u16,
            dst_port: 80,
            proto: 6,
            point,
            direction: Direction::Egress,
            overlay: Overlay::Legacy,
            src_net: Net::Legacy,
            dst_net: Net::Legacy,
            snat: Snat::None,
            snat_addr: None,
            peer: Some(Ipv4Addr::new(172, 18, 0, peer)),
            packets,
            bytes: packets * 100,
            first_seen_ns: 1,
            last_seen_ns: 2,
            tcp_flags: 0,
            syns: 0,
            syn_acks: 0,
            rsts: 0,
            segments: packets,
            retransmits,
            echo_requests: 0,
            echo_replies: 0,
        }
    }

    fn snapshot(flows: Vec<FlowRecord>) -> Snapshot {
        Snapshot {
            started_ns: 1,
            finished_ns: 2,
            flows,
            peers: vec![],
            counters: Default::default(),
            frag_needed: vec![],
            retired: RetiredReport::default(),
        }
    }

    #[test]
    fn filters_keep_a_peer_and_a_point_and_the_table_lists_the_worst() {
        let flows = vec![
            flow(3, Point::Underlay, 500, 0),
            flow(3, Point::Pod, 10, 4),
            flow(4, Point::Underlay, 900, 0),
            flow(3, Point::Underlay, 20, 1),
        ];
        let view = View {
            peer: Some(Ipv4Addr::new(172, 18, 0, 3)),
            ..View::default()
        };
        let kept = view.keep(snapshot(flows.clone()));
        let order: Vec<(u64, u64)> = kept
            .flows
            .iter()
            .map(|f| (f.retransmits, f.packets))
            .collect();
        assert_eq!(order, [(4, 10), (1, 20), (0, 500)]);
        let underlay = View {
            point: Some(Point::Underlay),
            ..view
        };
        assert_eq!(underlay.keep(snapshot(flows.clone())).flows.len(), 2);
        let all = View::default().keep(snapshot(flows));
        let shape = ClusterShape::default();
        let text = table(&all, &shape, 2);
        assert!(
            text.contains("Flows (4, worst first, 2 more not shown: --top 0 shows all)"),
            "{text}"
        );
        let listed = text
            .lines()
            .filter(|l| l.starts_with("pod ") || l.starts_with("underlay "))
            .count();
        assert_eq!(listed, 2, "{text}");
        // Columns named as the JSON's fields.
        assert!(
            text.lines()
                .any(|l| l.starts_with("point ") && l.contains(" retransmits")),
            "{text}"
        );
        assert!(!table(&all, &shape, 0).contains("more not shown"));
    }
}
