//! Snapshots as tables for people or JSON for programs.
use std::fmt::Write as _;

use crate::{datapath::Snapshot, shape::ClusterShape};

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

pub fn table(snapshot: &Snapshot, shape: &ClusterShape) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "UNDERLAY TRAFFIC PER PEER NODE");
    let _ = writeln!(
        out,
        "{:<18} {:<8} {:<10} {:>10} {:>12}",
        "PEER", "OVERLAY", "DIRECTION", "PACKETS", "BYTES"
    );
    for p in &snapshot.peers {
        let direction = if p.direction == observer_ebpf::Direction::Egress {
            "sent"
        } else {
            "received"
        };
        let _ = writeln!(
            out,
            "{:<18} {:<8} {:<10} {:>10} {:>12}",
            peer_name(shape, Some(p.peer)),
            p.overlay,
            direction,
            p.counts.packets,
            p.counts.bytes
        );
    }
    let _ = writeln!(out, "\nFLOWS ({})", snapshot.flows.len());
    let _ = writeln!(
        out,
        "{:<9} {:<7} {:<5} {:<22} {:<22} {:<15} {:<7} {:<10} {:<18} {:>8} {:>6} {:>6} {:>4} {:>5}",
        "POINT",
        "DIR",
        "PROTO",
        "SOURCE",
        "DESTINATION",
        "NETWORKS",
        "OVERLAY",
        "PEER",
        "SNAT",
        "PACKETS",
        "SYN",
        "SYNACK",
        "RST",
        "RETX"
    );
    for f in &snapshot.flows {
        let snat = match (f.snat, f.snat_addr) {
            (observer_ebpf::Snat::Source, Some(addr)) => format!("src={addr}"),
            (observer_ebpf::Snat::Destination, Some(addr)) => format!("dst={addr}"),
            _ => "-".to_string(),
        };
        let _ = writeln!(
            out,
            "{:<9} {:<7} {:<5} {:<22} {:<22} {:<15} {:<7} {:<10} {:<18} {:>8} {:>6} {:>6} {:>4} {:>5}",
            f.point,
            f.direction,
            f.proto_name(),
            format!("{}:{}", f.src, f.src_port),
            format!("{}:{}", f.dst, f.dst_port),
            format!("{}->{}", f.src_net, f.dst_net),
            f.overlay,
            peer_name(shape, f.peer),
            snat,
            f.packets,
            f.syns,
            f.syn_acks,
            f.rsts,
            f.retransmits
        );
    }
    let problems: Vec<_> = snapshot.counters.iter().filter(|(_, v)| **v != 0).collect();
    let _ = writeln!(out, "\nCOUNTERS");
    for (name, value) in problems {
        let _ = writeln!(out, "  {name:<26} {value}");
    }
    out
}

pub fn json(snapshot: &Snapshot) -> String {
    serde_json::to_string_pretty(snapshot).expect("snapshots serialize")
}
