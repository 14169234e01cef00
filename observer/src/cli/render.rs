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
