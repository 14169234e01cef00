//! `/metrics` in the Prometheus text exposition format (0.0.4). Every
//! series is labelled from small sets (nodes, networks, overlays, reasons),
//! so an agent's series grow with the number of nodes, never with pods or
//! flows. The counters are the kernel's, read at scrape time; the writer
//! is the format's few rules (HELP, TYPE, escaped label values) rather than
//! a client library built around counters the process increments itself.
use std::collections::BTreeMap;

use super::{State, window::LossRow};
use crate::{
    connections::{Connection, Handshake},
    datapath::{PeerRecord, Snapshot},
};

pub use crate::exposition::CONTENT_TYPE;
use crate::exposition::family;

/// Client-side TCP totals of one peer node and network pair.
#[derive(Default)]
struct TcpCounts {
    segments: u64,
    retransmits: u64,
}

/// Which number of a record a family shows.
type Value<T> = fn(&T) -> u64;

/// Everything one scrape shows.
pub fn render(
    state: &State,
    peers: &[PeerRecord],
    snapshot: &Snapshot,
    conns: &[Connection],
) -> String {
    let mut out = String::new();
    let node = state.node.as_str();
    let view = state.view();
    let underlay: [(&'static str, &str, Value<PeerRecord>); 2] = [
        (
            "crossover_underlay_packets_total",
            "Packets on the underlay to (egress) or from (ingress) a peer node, per overlay and network pair of the inner packets.",
            |p| p.packets,
        ),
        (
            "crossover_underlay_bytes_total",
            "Bytes on the underlay to or from a peer node, per overlay and network pair.",
            |p| p.bytes,
        ),
    ];
    for (name, help, value) in underlay {
        let mut f = family(&mut out, name, "counter", help);
        for p in peers {
            let peer = view.node_name(p.peer);
            let labels = [
                ("node", node),
                ("peer_node", peer.as_str()),
                ("overlay", p.overlay),
                ("src_net", p.src_net),
                ("dst_net", p.dst_net),
                ("direction", p.direction),
            ];
            f.sample(&labels, value(p));
        }
    }

    let mut seen = family(
        &mut out,
        "crossover_seen_packets_total",
        "counter",
        "Packets the programs saw, per hook point.",
    );
    for (name, value) in snapshot
        .counters
        .iter()
        .filter(|(n, _)| n.starts_with("seen_"))
    {
        seen.sample(&[("node", node), ("point", &name["seen_".len()..])], *value);
    }
    let mut skipped = family(
        &mut out,
        "crossover_skipped_packets_total",
        "counter",
        "Packets not (fully) turned into a flow, by reason; refused map inserts included.",
    );
    for (name, value) in snapshot
        .counters
        .iter()
        .filter(|(n, _)| !n.starts_with("seen_"))
    {
        skipped.sample(&[("node", node), ("reason", name)], *value);
    }

    let mut flows: BTreeMap<(&str, &str, &str), u64> = BTreeMap::new();
    for flow in &snapshot.flows {
        *flows
            .entry((flow.src_net, flow.dst_net, flow.snat))
            .or_default() += 1;
    }
    let mut f = family(
        &mut out,
        "crossover_flows",
        "gauge",
        "Flows in the kernel's table, by network pair and SNAT mark.",
    );
    for ((src, dst, snat), n) in flows {
        f.sample(
            &[
                ("node", node),
                ("src_net", src),
                ("dst_net", dst),
                ("snat", snat),
            ],
            n,
        );
    }

    // Per peer node and network pair: handshakes by result, segments.
    type Key = (String, &'static str, &'static str);
    let mut handshakes: BTreeMap<(Key, &'static str), u64> = BTreeMap::new();
    let mut segments: BTreeMap<Key, TcpCounts> = BTreeMap::new();
    for c in conns.iter().filter(|c| c.proto == 6) {
        let peer = c
            .peer
            .map_or_else(|| "local".to_string(), |p| view.node_name(p));
        let key = (peer, c.client_net, c.server_net);
        let result = match c.handshake {
            Handshake::Answered => "answered",
            Handshake::Unanswered => "unanswered",
            Handshake::Reset => "reset",
            Handshake::Pending => "pending",
            Handshake::Unseen | Handshake::NotTcp => "unseen",
        };
        *handshakes.entry((key.clone(), result)).or_default() += 1;
        let s = segments.entry(key).or_default();
        s.segments += c.segments;
        s.retransmits += c.retransmits;
    }
    // Hook (datapath/ageing.rs): connections aged out of the flow table
    // keep counting in these totals, so the counters never go backwards.
    for g in snapshot.retired.groups.iter().filter(|g| g.proto == 6) {
        let peer = g
            .peer
            .map_or_else(|| "local".to_string(), |p| view.node_name(p));
        let s = segments
            .entry((peer, g.client_net, g.server_net))
            .or_default();
        s.segments += g.totals.segments;
        s.retransmits += g.totals.retransmits;
    }
    let mut f = family(
        &mut out,
        "crossover_handshakes",
        "gauge",
        "TCP connections in the flow table by handshake result, peer node and network pair.",
    );
    for (((peer, src, dst), result), n) in &handshakes {
        f.sample(
            &[
                ("node", node),
                ("peer_node", peer),
                ("src_net", src),
                ("dst_net", dst),
                ("result", result),
            ],
            *n,
        );
    }
    let tcp: [(&'static str, &str, Value<TcpCounts>); 2] = [
        (
            "crossover_tcp_segments_total",
            "TCP data segments sent by clients, per peer node and network pair.",
            |c| c.segments,
        ),
        (
            "crossover_tcp_retransmits_total",
            "TCP segments retransmitted by clients, per peer node and network pair.",
            |c| c.retransmits,
        ),
    ];
    for (name, help, value) in tcp {
        let mut f = family(&mut out, name, "counter", help);
        for ((peer, src, dst), counts) in &segments {
            let labels = [
                ("node", node),
                ("peer_node", peer.as_str()),
                ("src_net", src),
                ("dst_net", dst),
            ];
            f.sample(&labels, value(counts));
        }
    }

    window_families(&mut out, state);
    if let Some(probing) = &state.probing {
        let totals = probing.stats.totals();
        let window = probing.stats.window(std::time::Instant::now());
        let unattributed = probing.stats.unattributed_totals();
        let responder = probing.responder.totals();
        let report = crate::probe::metrics::Report {
            totals: &totals,
            window: &window,
            unattributed: &unattributed,
            responder: Some(&responder),
        };
        crate::probe::metrics::write(&mut out, node, &report);
    }
    cluster_families(&mut out, state);

    let mut f = family(
        &mut out,
        "crossover_errors_total",
        "counter",
        "Errors of the agent itself, by reason.",
    );
    for (reason, n) in state.errors() {
        f.sample(&[("node", node), ("reason", reason)], n);
    }
    out
}

/// The loss matrix over the current window, from this node's side.
fn window_families(out: &mut String, state: &State) {
    let loss = state.loss();
    let node = state.node.as_str();
    let labels = |r: &'_ LossRow| {
        [
            ("node", node.to_string()),
            ("peer_node", r.peer_node.clone()),
            ("overlay", r.overlay.clone()),
            ("src_net", r.src_net.clone()),
            ("dst_net", r.dst_net.clone()),
            ("signal", r.signal.clone()),
        ]
    };
    let gauges: [(&'static str, &str, Value<LossRow>); 2] = [
        (
            "crossover_window_sent",
            "Packets, segments or handshakes sent in the current window, per peer node, overlay, network pair and signal.",
            |r| r.sent,
        ),
        (
            "crossover_window_lost",
            "Of those, lost (never received, retransmitted, unanswered) in the current window.",
            |r| r.lost,
        ),
    ];
    for (name, help, value) in gauges {
        let mut f = family(out, name, "gauge", help);
        for row in &loss.rows {
            f.sample(&labels(row), value(row));
        }
    }
    let mut f = family(
        out,
        "crossover_loss_ratio",
        "gauge",
        "Lost over sent in the current window; absent when nothing was sent.",
    );
    for row in &loss.rows {
        let Some(ratio) = row.ratio() else { continue };
        f.sample(&labels(row), ratio);
    }
    let mut f = family(
        out,
        "crossover_window_seconds",
        "gauge",
        "Length of the loss window.",
    );
    f.sample(&[("node", node)], loss.window_seconds);
    let mut f = family(
        out,
        "crossover_peer_agent_up",
        "gauge",
        "1 when the peer node's agent answered the last sample; its pairs are missing otherwise.",
    );
    for (peer, status) in state.peer_status() {
        f.sample(
            &[("node", node), ("peer_node", &peer)],
            u64::from(status.up),
        );
    }
    let mut f = family(
        out,
        "crossover_sample_seconds",
        "gauge",
        "Time the last sample of this node's and its peers' counters took.",
    );
    f.sample(&[("node", node)], state.sample_duration().as_secs_f64());
}

/// The Kubernetes watches, when the agent follows a cluster.
fn cluster_families(out: &mut String, state: &State) {
    let Some(cluster) = &state.cluster else {
        return;
    };
    let node = state.node.as_str();
    let health = cluster.health();
    let mut f = family(
        out,
        "crossover_kube_watch_synced",
        "gauge",
        "1 once the watch of a resource has listed it fully.",
    );
    for (resource, h) in &health {
        f.sample(
            &[("node", node), ("resource", resource)],
            u64::from(h.synced),
        );
    }
    let mut f = family(
        out,
        "crossover_kube_watch_errors_total",
        "counter",
        "Errors of the watch of a resource (retried with backoff).",
    );
    for (resource, h) in &health {
        f.sample(&[("node", node), ("resource", resource)], h.errors);
    }
    let view = state.view();
    let mut f = family(
        out,
        "crossover_shape_rejected",
        "gauge",
        "1 when the shape derived from the cluster was refused and the previous one is still in force.",
    );
    f.sample(&[("node", node)], u64::from(view.rejected.is_some()));
    let mut f = family(
        out,
        "crossover_peer_keys_without_slot",
        "gauge",
        "Per-peer counter keys of the shape that got no fast-path slot (beyond the slot capacity): still counted, through the PEERS hash, one lookup more per packet.",
    );
    f.sample(
        &[("node", node)],
        super::lock(&state.observer).slotless() as u64,
    );
}
