//! The probes' Prometheus families, in the text format (0.0.4) of
//! `agent/metrics.rs`, for the agent to append to its `/metrics`.
//!
//! RTT is a histogram of fixed buckets ([`RTT_BUCKETS`], 50 µs to 1 s)
//! since the start: a rule can aggregate it across node pairs, overlays
//! and nodes (`histogram_quantile(0.99, sum by (le, overlay) (rate(...)))`),
//! which a summary's quantiles cannot be, and Cilium, Hubble and
//! goldpinger export theirs the same way. It costs 16 series a pair and signal; past 100 nodes only the nodes under
//! migration have probe series at all (agent/metrics.rs).
use super::{
    mesh::Summary,
    responder::ResponderTotals,
    stats::{Probe, RTT_BUCKETS, Totals},
};

/// Which number of a series a family shows.
type Value = fn(&Totals) -> u64;

use crate::exposition::family;

/// What one scrape shows of the probes.
pub struct Report<'a> {
    pub totals: &'a [Totals],
    /// [`super::ProbeStats::unattributed_totals`].
    pub unattributed: &'a [(&'static str, u64)],
    /// The agent's own responder, if it runs one.
    pub responder: Option<&'a ResponderTotals>,
    /// [`super::ProbeStats::rungs`]: probes the MTU ladders sent.
    pub ladder_packets: u64,
}

/// Appends the probe families to `out`, every series labelled with `node`.
pub fn write(out: &mut String, node: &str, report: &Report) {
    let series = |t: &'_ Totals| {
        [
            ("node", node.to_owned()),
            ("peer_node", t.key.peer_node.clone()),
            ("overlay", t.key.overlay.label().to_owned()),
            ("dst_net", t.key.dst_net.label().to_owned()),
            ("signal", t.key.signal.label().to_owned()),
        ]
    };
    let counters: [(&'static str, &str, Value); 2] = [
        (
            "crossover_probes_sent_total",
            "Probes sent to a peer node, per overlay, network answering and signal.",
            |t| t.sent,
        ),
        (
            "crossover_probes_received_total",
            "Probes answered within the timeout.",
            |t| t.received,
        ),
    ];
    for (name, help, value) in counters {
        let mut f = family(out, name, "counter", help);
        for t in report.totals {
            let labels = series(t);
            f.sample(&labels, value(t));
        }
    }
    let mut f = family(
        out,
        "crossover_probes_lost_total",
        "counter",
        "Probes lost, by reason: no answer within the timeout, or (TCP) reset, unreachable.",
    );
    for t in report.totals {
        let labels = series(t);
        for (reason, n) in &t.lost_by_reason {
            let mut l = refs(&labels);
            l.push(("reason", *reason));
            f.sample(&l, n);
        }
    }
    let mut f = family(
        out,
        "crossover_probes_refused_total",
        "counter",
        "Probes the peer refused (TCP RST, ICMP port unreachable): nothing listens; neither received nor lost.",
    );
    for t in report.totals {
        f.sample(&series(t), t.refused);
    }
    let mut f = family(
        out,
        "crossover_probes_late_total",
        "counter",
        "UDP probes answered after the timeout (also counted as lost).",
    );
    for t in report.totals.iter().filter(|t| t.key.signal.is_udp()) {
        f.sample(&series(t), t.late);
    }

    // The large probes' path: one or two gauges and a counter a series
    // of signal `mtu`, so bounded as the probe series are.
    let mut f = family(
        out,
        "crossover_path_mtu_bytes",
        "gauge",
        "Large probes (signal mtu): the IPv4 packet size they are sent at (kind probed: the \
         route's MTU, DF set); while that size is lost and small probes pass (an MTU black \
         hole), the largest size the ladder saw pass (kind fits); the next-hop MTU of the last \
         ICMP fragmentation-needed that answered one (kind icmp_next_hop).",
    );
    for t in report.totals {
        let Some(mtu) = t.mtu.filter(|m| m.probed > 0) else {
            continue;
        };
        let labels = series(t);
        for (kind, value) in [
            ("probed", Some(mtu.probed)),
            ("fits", mtu.fits),
            ("icmp_next_hop", mtu.icmp_next_hop),
        ] {
            if let Some(v) = value {
                let mut l = refs(&labels);
                l.push(("kind", kind));
                f.sample(&l, v);
            }
        }
    }
    let mut f = family(
        out,
        "crossover_probe_icmp_frag_needed_total",
        "counter",
        "ICMP fragmentation-needed errors that answered a large probe (PMTU discovery at work: \
         the probe counts as refused, not lost).",
    );
    for t in report.totals.iter().filter(|t| t.key.signal == Probe::Mtu) {
        f.sample(&series(t), t.mtu.map_or(0, |m| m.icmp_frag_needed));
    }
    let mut f = family(
        out,
        "crossover_probe_mtu_ladder_packets_total",
        "counter",
        "Probes the MTU ladders sent to find the size that fits (in no series).",
    );
    f.sample(&[("node", node)], report.ladder_packets);

    let mut f = family(
        out,
        "crossover_probe_rtt_seconds",
        "histogram",
        "Probe round-trip time (UDP echo, TCP handshake) since the start, in fixed buckets \
         from 50 us to 1 s (the probe timeout).",
    );
    for t in report.totals {
        let labels = series(t);
        let mut cumulative = 0;
        for (i, n) in t.rtt_buckets.iter().enumerate() {
            cumulative += n;
            let le = RTT_BUCKETS
                .get(i)
                .map_or_else(|| "+Inf".into(), f64::to_string);
            let mut l = refs(&labels);
            l.push(("le", &le));
            f.sample_suffixed("_bucket", &l, cumulative);
        }
        f.sample_suffixed("_sum", &labels, t.rtt_sum_seconds);
        f.sample_suffixed("_count", &labels, t.received);
    }

    let mut f = family(
        out,
        "crossover_probe_ignored_total",
        "counter",
        "Replies and probes no peer can be blamed for (stray, duplicate, malformed, over the cap).",
    );
    for (reason, n) in report.unattributed {
        f.sample(&[("node", node), ("reason", reason)], n);
    }

    if let Some(r) = report.responder {
        let mut f = family(
            out,
            "crossover_probe_responder_answers_total",
            "counter",
            "Probes this node's responder answered: UDP echoes, TCP connections accepted.",
        );
        f.sample(
            &[("node", node), ("signal", Probe::Udp.label())],
            r.udp_replies,
        );
        f.sample(
            &[("node", node), ("signal", Probe::Tcp.label())],
            r.tcp_accepted,
        );
        let mut f = family(
            out,
            "crossover_probe_responder_refused_total",
            "counter",
            "Datagrams the responder dropped (not a probe request), and TCP connections over its cap.",
        );
        for (reason, n) in &r.refused {
            f.sample(&[("node", node), ("reason", reason)], n);
        }
        f.sample(
            &[("node", node), ("reason", "tcp_over_cap")],
            r.tcp_over_cap,
        );
    }
}

/// The probe mesh's families: what is probed and how the budget is spent.
pub fn write_mesh(out: &mut String, node: &str, summary: &Summary) {
    let mut f = family(
        out,
        "crossover_probe_targets",
        "gauge",
        "Targets this node probes: of nodes under migration (steadily), and in rotation.",
    );
    f.sample(&[("node", node), ("set", "focus")], summary.focus_targets);
    f.sample(
        &[("node", node), ("set", "rotation")],
        summary.rotation_targets,
    );
    let mut f = family(
        out,
        "crossover_probe_rotation_seconds",
        "gauge",
        "Every target in rotation is probed at least once within this period.",
    );
    f.sample(&[("node", node)], summary.period.as_secs_f64());
    let mut f = family(
        out,
        "crossover_probe_packets_per_second",
        "gauge",
        "Probe packets a second this node may send (budget) and plans to (focus, rotation); \
         a TCP probe counts 3 (SYN, ACK, RST).",
    );
    for (kind, value) in [
        ("budget", summary.budget),
        ("focus", summary.focus_packets),
        ("rotation", summary.rotation_packets),
        ("ladder", summary.ladder_packets),
    ] {
        f.sample(&[("node", node), ("kind", kind)], value);
    }
}

fn refs<'a>(labels: &'a [(&'static str, String)]) -> Vec<(&'a str, &'a str)> {
    labels.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

#[cfg(test)]
mod tests {
    use observer_ebpf::{Net, Overlay};

    use super::*;
    use crate::probe::stats::SeriesKey;

    fn key(signal: Probe) -> SeriesKey {
        SeriesKey {
            peer_node: "odd\"name\\".into(),
            overlay: Overlay::Cilium,
            dst_net: Net::Host,
            signal,
        }
    }

    fn totals(signal: Probe) -> Totals {
        Totals {
            key: key(signal),
            sent: 10,
            received: 8,
            lost: 2,
            refused: 3,
            lost_by_reason: vec![("timeout", 2)],
            late: 1,
            rtt_sum_seconds: 0.004,
            // 8 received: 1 at most 50 µs, 6 in (250, 500] µs, 1 over 1 s.
            rtt_buckets: [1, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1],
            mtu: (signal == Probe::Mtu).then_some(crate::probe::PathMtu {
                probed: 1450,
                fits: Some(1400),
                icmp_next_hop: Some(1300),
                icmp_frag_needed: 2,
            }),
        }
    }

    #[test]
    fn families_have_help_and_type_and_escaped_labels() {
        let totals = [totals(Probe::Udp), totals(Probe::Tcp), totals(Probe::Mtu)];
        let mut out = String::new();
        write(
            &mut out,
            "n1",
            &Report {
                totals: &totals,
                unattributed: &[("stray", 3)],
                responder: None,
                ladder_packets: 24,
            },
        );
        let labels = |signal: &str| {
            format!(
                "node=\"n1\",peer_node=\"odd\\\"name\\\\\",overlay=\"cilium\",dst_net=\"host\",signal=\"{signal}\""
            )
        };
        let udp = labels("probe_udp");
        let tcp = labels("probe_tcp");
        let mtu = labels("mtu");
        for line in [
            format!("crossover_probes_sent_total{{{mtu}}} 10"),
            format!("crossover_path_mtu_bytes{{{mtu},kind=\"probed\"}} 1450"),
            format!("crossover_path_mtu_bytes{{{mtu},kind=\"fits\"}} 1400"),
            format!("crossover_path_mtu_bytes{{{mtu},kind=\"icmp_next_hop\"}} 1300"),
            format!("crossover_probe_icmp_frag_needed_total{{{mtu}}} 2"),
            "crossover_probe_mtu_ladder_packets_total{node=\"n1\"} 24".into(),
            format!("crossover_probes_sent_total{{{udp}}} 10"),
            format!("crossover_probes_lost_total{{{tcp},reason=\"timeout\"}} 2"),
            format!("crossover_probes_late_total{{{udp}}} 1"),
            format!("crossover_probes_refused_total{{{udp}}} 3"),
            format!("crossover_probe_rtt_seconds_bucket{{{udp},le=\"0.00005\"}} 1"),
            format!("crossover_probe_rtt_seconds_bucket{{{udp},le=\"0.00025\"}} 1"),
            format!("crossover_probe_rtt_seconds_bucket{{{udp},le=\"0.0005\"}} 7"),
            format!("crossover_probe_rtt_seconds_bucket{{{tcp},le=\"1\"}} 7"),
            format!("crossover_probe_rtt_seconds_bucket{{{tcp},le=\"+Inf\"}} 8"),
            format!("crossover_probe_rtt_seconds_sum{{{udp}}} 0.004"),
            format!("crossover_probe_rtt_seconds_count{{{udp}}} 8"),
            "crossover_probe_ignored_total{node=\"n1\",reason=\"stray\"} 3".into(),
        ] {
            assert!(out.lines().any(|l| l == line), "no {line} in:\n{out}");
        }
        assert!(!out.contains(&format!("crossover_probes_late_total{{{tcp}}}")));
        assert!(!out.contains(&format!("crossover_path_mtu_bytes{{{udp}")));
        // Every sample follows its family's HELP and TYPE.
        let mut declared = Vec::new();
        for line in out.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                declared.push(rest.split(' ').next().unwrap().to_owned());
            } else if !line.starts_with('#') {
                let name = line.split(['{', ' ']).next().unwrap();
                let family = name
                    .strip_suffix("_sum")
                    .or_else(|| name.strip_suffix("_count"))
                    .or_else(|| name.strip_suffix("_bucket"))
                    .filter(|f| *f == "crossover_probe_rtt_seconds")
                    .unwrap_or(name);
                assert_eq!(declared.last().map(String::as_str), Some(family), "{line}");
            }
        }
        assert_eq!(out.matches("# HELP ").count(), declared.len());
    }
}
