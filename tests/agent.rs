//! `crossover agent` on every node of a lab, and `crossover loss` asking
//! them: the figures come out of the HTTP API and /metrics, and match what
//! the wire dropped. Needs root (namespaces, programs in the kernel).
use std::{
    process::Command,
    time::{Duration, Instant},
};

use crossover_tests::{
    agents::{Agents, CROSSOVER, PORT, assert_wire_drops, loss_row, metric},
    fleet::tcx_programs_in,
    lab::{Fault, Lab, LabSpec, Overlay, traffic},
    mtu::{self, pair_name},
    netns::{http_get, unique},
    require_root,
};

#[test]
fn loss_per_node_pair_comes_out_of_the_agents() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("a"),
        nodes: 3,
        migrated: 1,
        pods: 2,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    let cp = lab.node_ns("control-plane");
    let id = lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-2".into(),
            overlay: Overlay::Legacy,
            percent: 3.0,
        })
        .unwrap();
    let e = |id: &str| lab.endpoint(id).unwrap();
    let udp = traffic::udp_stream(
        &e("control-plane/app-1"),
        &e("worker-2/app-1"),
        20_000,
        10_000,
        200,
    )
    .unwrap();
    let back = traffic::udp_stream(
        &e("worker-1/app-1"),
        &e("control-plane/app-2"),
        2000,
        2000,
        200,
    )
    .unwrap();
    let tcp = traffic::tcp_connections(
        &e("control-plane/app-1"),
        &e("worker-1/app-1"),
        3,
        Duration::from_secs(1),
    )
    .unwrap();
    assert_eq!(tcp.answered, 3);
    std::thread::sleep(Duration::from_millis(300));
    let drops = lab.drops(id).unwrap();

    // The agent's own window: the handshakes control-plane's clients
    // opened towards worker-1 (SNATed to cilium_host), all answered.
    std::thread::sleep(Duration::from_millis(1200));
    let (status, body) = http_get(&cp, &format!("{}/api/v1/loss", agents.urls[0]));
    assert_eq!(status, 200, "{body}");
    let report: serde_json::Value = serde_json::from_str(&body).unwrap();
    let rows = report["rows"].as_array().unwrap();
    assert!(
        rows.iter().any(|r| r["signal"] == "handshake"
            && r["peer_node"] == "worker-1"
            && r["overlay"] == "cilium"
            && r["src_net"] == "host"
            && r["sent"] == 3
            && r["lost"] == 0),
        "{report:#}"
    );
    assert!(
        rows.iter().all(|r| r["signal"] != "delivery"),
        "delivery needs both ends: {report:#}"
    );

    // crossover loss, run where an SRE would: on a node.
    let matrix = agents.loss_since_start(&cp);
    let row = |from: &str, to: &str, overlay: &str, src: &str, dst: &str| {
        loss_row(&matrix, from, to, overlay, (src, dst))
    };
    let faulty = row("control-plane", "worker-2", "legacy", "legacy", "legacy");
    let (sent, received) = assert_wire_drops(faulty, udp.sent, drops);
    let ratio = (sent - received) as f64 / sent as f64 * 100.0;
    assert!(
        (ratio - 3.0).abs() < 0.75,
        "3% injected, {ratio:.2}% measured"
    );
    assert!(back.sent > 0);
    // A Cilium pod to a legacy pod, SNATed to worker-1's flannel.1: both
    // ends count it as host to legacy.
    row("worker-1", "control-plane", "legacy", "host", "legacy");
    for d in matrix.iter().filter(|d| !std::ptr::eq(*d, faulty)) {
        assert_eq!(d["sent"], d["received"], "no loss elsewhere: {d}");
    }
    let table = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cp,
            CROSSOVER,
            "loss",
            "--since-start",
            "--agent",
            &agents.urls[0],
            "--agent",
            &agents.urls[2],
        ])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&table.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("control-plane")
            && l.contains("worker-2")
            && l.contains(&drops.to_string())),
        "{table}"
    );

    // The default: one reading of every agent's half of the same window
    // (the agents' ticks: 500 ms; 60 s reaches back before the traffic),
    // control-plane's rows exactly. The faulted pair shows the fault's
    // drops, and so does the cluster total.
    let mut merged = Command::new("ip");
    merged.args(["netns", "exec", &cp, CROSSOVER, "loss", "--format", "json"]);
    merged.args(["--window", "60s", "--sample-interval", "500ms"]);
    merged.args(["--node", "control-plane"]);
    for url in &agents.urls {
        merged.args(["--agent", url]);
    }
    let out = merged.output().unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let merged: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(merged["failed"], serde_json::json!([]), "{merged:#}");
    assert_eq!(merged["answered"], 3, "{merged:#}");
    let rows = merged["rows"].as_array().unwrap();
    let faulted: Vec<_> = rows
        .iter()
        .filter(|r| {
            r["signal"] == "delivery"
                && r["node"] == "control-plane"
                && r["peer_node"] == "worker-2"
                && r["overlay"] == "legacy"
        })
        .collect();
    assert_eq!(
        faulted.len(),
        1,
        "one network pair on that overlay: {merged:#}"
    );
    assert_eq!(
        (&faulted[0]["src_net"], &faulted[0]["dst_net"]),
        (&"legacy".into(), &"legacy".into())
    );
    assert_eq!(faulted[0]["lost"], drops, "{merged:#}");
    assert!(faulted[0]["sent"].as_u64().unwrap() >= udp.sent);
    let total = merged["totals"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["signal"] == "delivery" && t["overlay"] == "legacy" && t["src_net"] == "legacy")
        .unwrap_or_else(|| panic!("no legacy delivery total: {merged:#}"));
    assert_eq!(total["lost"], drops, "{merged:#}");
    // The TCP connections to worker-1's Cilium pod, SNATed to
    // control-plane's cilium_host: host to Cilium, both ways.
    for (from, to) in [("control-plane", "worker-1"), ("worker-1", "control-plane")] {
        assert!(
            rows.iter().any(|r| r["signal"] == "delivery"
                && r["node"] == from
                && r["peer_node"] == to
                && r["overlay"] == "cilium"
                && r["sent"].as_u64().unwrap() > 0),
            "{from} -> {to}: {merged:#}"
        );
    }
    assert!(
        rows.iter().any(|r| r["signal"] == "handshake"
            && r["node"] == "control-plane"
            && r["peer_node"] == "worker-1"
            && r["sent"] == 3),
        "{merged:#}"
    );
    for r in rows.iter().filter(|r| !faulted.contains(r)) {
        assert_eq!(r["lost"], 0, "no loss elsewhere: {r}");
    }
    // A dead agent beside the live ones: printed, named, exit 2.
    let out = Command::new("ip")
        .args(["netns", "exec", &cp, CROSSOVER, "loss", "--timeout", "1"])
        .args(["--agent", &agents.urls[0], "--agent", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("delivery totals: not computed")),
        "{table}"
    );
    assert!(
        table
            .lines()
            .any(|l| l.starts_with("failed: http://127.0.0.1:9: GET ")
                && l.contains("did not answer")),
        "{table}"
    );

    // The same figure on the sender's /metrics, labelled by node.
    let (status, body) = http_get(&cp, &format!("{}/metrics", agents.urls[0]));
    assert_eq!(status, 200);
    let egress: u64 = metric(
        &body,
        "crossover_underlay_packets_total{node=\"control-plane\",peer_node=\"worker-2\",overlay=\"legacy\",src_net=\"legacy\",dst_net=\"legacy\",direction=\"egress\"}",
    );
    assert_eq!(egress, sent);
    for line in body.lines().filter(|l| !l.starts_with('#')) {
        // crossover's families, and the standard process_* ones.
        assert!(
            (line.starts_with("crossover_") || line.starts_with("process_"))
                && line.rsplit(' ').next().unwrap().parse::<f64>().is_ok(),
            "{line}"
        );
        assert!(
            !line.contains("10.24"),
            "no pod addresses in labels: {line}"
        );
    }
    // The legacy pod's connections to the Cilium pod leave SNATed to
    // cilium_host (host) and are answered towards it.
    assert!(
        metric::<u64>(
            &body,
            "crossover_tcp_handshakes_total{node=\"control-plane\",peer_node=\"worker-1\",overlay=\"cilium\",src_net=\"host\",dst_net=\"cilium\",direction=\"egress\",result=\"answered\"}"
        ) >= 3
    );
    // The three handshakes control-plane opened towards worker-1 (SNATed
    // to cilium_host), as the handshake signal of the window: all answered.
    let handshakes: u64 = metric(
        &body,
        "crossover_window_sent{node=\"control-plane\",peer_node=\"worker-1\",overlay=\"cilium\",src_net=\"host\",dst_net=\"cilium\",signal=\"handshake\"}",
    );
    assert_eq!(handshakes, 3, "{body}");
    let retried: u64 = metric(
        &body,
        "crossover_window_lost{node=\"control-plane\",peer_node=\"worker-1\",overlay=\"cilium\",src_net=\"host\",dst_net=\"cilium\",signal=\"handshake\"}",
    );
    assert_eq!(retried, 0, "{body}");

    // The JSON API: connections joined across SNAT.
    let (status, body) = http_get(&cp, &format!("{}/api/v1/connections", agents.urls[0]));
    assert_eq!(status, 200);
    let conns: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let cilium_pod = e("worker-1/app-1").addr.to_string();
    let joined = conns
        .iter()
        .filter(|c| {
            c["server"].as_str().unwrap().starts_with(&cilium_pod) && c["snat_seen"] == "translated"
        })
        .count();
    assert_eq!(joined, 3, "{conns:#?}");
    assert_eq!(http_get(&cp, &format!("{}/healthz", agents.urls[1])).0, 200);
    assert_eq!(http_get(&cp, &format!("{}/nope", agents.urls[1])).0, 404);

    // SIGTERM: every agent exits cleanly and takes its programs along.
    assert_eq!(agents.stop(), vec![0, 0, 0]);
    for node in lab.nodes() {
        let left = tcx_programs_in(&lab.node_ns(&node.name));
        assert!(left.is_empty(), "{}: {left:?}", node.name);
    }
}

/// Connections reset by their client, whose conntrack entries are gone
/// before anyone reads the flows (the close timeout lowered to 1 s): each
/// still shows once, joined across the SNAT to cilium_host, because the
/// agent keeps the mappings conntrack announced when it destroyed them.
#[test]
fn connections_gone_from_conntrack_are_joined_once() {
    use std::{
        io::{Read, Write},
        net::{TcpListener, TcpStream},
    };

    const RESETS: usize = 5;
    const SERVER_PORT: u16 = 7090;
    require_root();
    let lab = Lab::up(&LabSpec {
        name: unique("c"),
        nodes: 3,
        migrated: 1,
        pods: 2,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    let cp = lab.node_ns("control-plane");
    crossover_tests::netns::sh(&[
        "ip",
        "netns",
        "exec",
        &cp,
        "sysctl",
        "-qw",
        "net.netfilter.nf_conntrack_tcp_timeout_close=1",
    ]);
    let client = lab.endpoint("control-plane/app-1").unwrap();
    let server = lab.endpoint("worker-1/app-1").unwrap();
    let server_ns = server.netns.clone();
    let server_addr = server.addr;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel();
    let serving = std::thread::spawn(move || {
        let _ns = observer::netns::enter(&server_ns).unwrap();
        let listener = TcpListener::bind((server_addr, SERVER_PORT)).unwrap();
        ready_tx.send(()).unwrap();
        for _ in 0..RESETS {
            let (mut conn, _) = listener.accept().unwrap();
            let mut request = [0u8; 16];
            conn.read_exact(&mut request).unwrap();
            conn.write_all(&request).unwrap();
            // Wait for the client's RST.
            let _ = conn.read(&mut request);
        }
    });
    ready_rx.recv_timeout(Duration::from_secs(5)).unwrap();
    let client_ns = client.netns.clone();
    std::thread::spawn(move || {
        let _ns = observer::netns::enter(&client_ns).unwrap();
        for _ in 0..RESETS {
            let mut conn = TcpStream::connect((server_addr, SERVER_PORT)).unwrap();
            conn.write_all(&[0x5a; 16]).unwrap();
            let mut answer = [0u8; 16];
            conn.read_exact(&mut answer).unwrap();
            // Close with a RST: conntrack's entry goes to CLOSE, 1 s here.
            let linger = libc::linger {
                l_onoff: 1,
                l_linger: 0,
            };
            // SAFETY: valid fd, option value and length.
            let rc = unsafe {
                libc::setsockopt(
                    std::os::fd::AsRawFd::as_raw_fd(&conn),
                    libc::SOL_SOCKET,
                    libc::SO_LINGER,
                    (&raw const linger).cast(),
                    size_of::<libc::linger>() as libc::socklen_t,
                )
            };
            assert_eq!(rc, 0);
        }
    })
    .join()
    .unwrap();
    serving.join().unwrap();
    // Past the close timeout: conntrack destroys the entries (its gc, or
    // the agent's next dump, which finds them expired).
    std::thread::sleep(Duration::from_secs(3));
    let (status, body) = http_get(&cp, &format!("{}/api/v1/connections", agents.urls[0]));
    assert_eq!(status, 200);
    let conns: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    let server_end = format!("{server_addr}:{SERVER_PORT}");
    let ours: Vec<&serde_json::Value> = conns
        .iter()
        .filter(|c| c["server"].as_str() == Some(server_end.as_str()))
        .collect();
    assert_eq!(ours.len(), RESETS, "each connection once: {ours:#?}");
    for c in &ours {
        assert_eq!(c["snat_seen"], "translated", "{c:#?}");
        assert_eq!(
            c["client"].as_str().unwrap().split(':').next(),
            Some(client.addr.to_string().as_str()),
            "named by the pod, {c:#?}"
        );
    }
    let (_, metrics) = http_get(&cp, &format!("{}/metrics", agents.urls[0]));
    let kept: u64 = metric(
        &metrics,
        "crossover_conntrack_departed_kept_total{node=\"control-plane\"}",
    );
    assert!(kept >= RESETS as u64, "{kept} mappings kept");
    assert_eq!(agents.stop(), vec![0, 0, 0]);
}

/// A 2-node lab (one node migrated) with agents that pin their maps, so a
/// restarted one adopts them, and `percent` loss on the wire from worker-1
/// to control-plane on the legacy overlay: the lab, the pins (removed on
/// drop), the agents and the fault.
fn pinned_agents_under_loss(
    name: &str,
    percent: f64,
) -> (Lab, crossover_tests::pins::TestPins, Agents, u32) {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique(name),
        nodes: 2,
        migrated: 1,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let pins = crossover_tests::pins::TestPins::outside_sys();
    let pin_arg = format!("{}/{{node}}", pins.path.display());
    let agents = Agents::start_with(&lab, &["--pin-path", &pin_arg]);
    let id = lab
        .inject(Fault::Loss {
            from: "worker-1".into(),
            to: "control-plane".into(),
            overlay: Overlay::Legacy,
            percent,
        })
        .unwrap();
    (lab, pins, agents, id)
}

/// An agent killed mid-stream and started again over its pinned maps and
/// links: its counters resume where they were, nothing is lost or counted
/// twice, and the loss matrix still equals what the wire dropped.
#[test]
fn a_crashed_agent_restarts_with_its_counters() {
    let (lab, _pins, mut agents, id) = pinned_agents_under_loss("ar", 2.0);
    let cp = lab.node_ns("control-plane");
    let egress = |agents: &Agents| -> u64 {
        let (_, body) = http_get(&cp, &format!("{}/metrics", agents.urls[0]));
        metric(
            &body,
            "crossover_underlay_packets_total{node=\"control-plane\",peer_node=\"worker-1\",overlay=\"cilium\",src_net=\"host\",dst_net=\"cilium\",direction=\"egress\"}",
        )
    };
    let e = |id: &str| lab.endpoint(id).unwrap();
    // Both ways through control-plane's agent while it crashes: its sends
    // and its receives must both survive.
    let (from_cp, to_cp) = std::thread::scope(|s| {
        let a = s.spawn(|| {
            traffic::udp_stream(
                &e("control-plane/app-1"),
                &e("worker-1/app-1"),
                16_000,
                4000,
                200,
            )
            .unwrap()
        });
        let b = s.spawn(|| {
            traffic::udp_stream(
                &e("worker-1/app-1"),
                &e("control-plane/app-1"),
                16_000,
                4000,
                200,
            )
            .unwrap()
        });
        std::thread::sleep(Duration::from_millis(1500));
        let before = egress(&agents);
        assert!(before > 0);
        agents.crash_and_restart(&lab, 0);
        let after = egress(&agents);
        assert!(after >= before, "counters went back: {before} -> {after}");
        (a.join().unwrap(), b.join().unwrap())
    });
    std::thread::sleep(Duration::from_millis(300));
    let drops = lab.drops(id).unwrap();
    assert!(drops > 0);
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &cp,
            CROSSOVER,
            "loss",
            "--since-start",
            "--format",
            "json",
        ])
        .args(["--agent", &agents.urls[0], "--agent", &agents.urls[1]])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let matrix: Vec<serde_json::Value> = serde_json::from_slice(&out.stdout).unwrap();
    let row = |from: &str, to: &str, overlay: &str, src: &str, dst: &str| {
        loss_row(&matrix, from, to, overlay, (src, dst)).clone()
    };
    // A legacy pod to a Cilium pod goes on the Cilium overlay, SNATed to
    // cilium_host (host to Cilium); the other stream on the legacy one,
    // SNATed to flannel.1 (host to legacy). Both ends must agree on the
    // pair for sent and received to meet in one row.
    let out_row = row("control-plane", "worker-1", "cilium", "host", "cilium");
    let in_row = row("worker-1", "control-plane", "legacy", "host", "legacy");
    assert!(
        out_row["sent"].as_u64().unwrap() >= from_cp.sent,
        "{out_row} {from_cp:?}"
    );
    assert_eq!(
        out_row["sent"], out_row["received"],
        "nothing lost or doubled: {out_row}"
    );
    assert!(
        in_row["sent"].as_u64().unwrap() >= to_cp.sent,
        "{in_row} {to_cp:?}"
    );
    let lost = in_row["sent"].as_u64().unwrap() - in_row["received"].as_u64().unwrap();
    assert_eq!(
        lost, drops,
        "the restarted receiver missed nothing: {in_row}"
    );
    drop(agents);
}

/// A clean lab under continuous traffic, read as the gate reads it (every
/// agent's half of the same aligned window, control-plane's rows exactly)
/// every 2 s for two minutes (`CROSSOVER_CLEAN_SECONDS`): never any loss.
/// Packets in flight at a window's edges must never look lost.
#[test]
fn a_clean_lab_under_continuous_traffic_reads_no_loss_for_minutes() {
    require_root();
    let seconds: u64 = std::env::var("CROSSOVER_CLEAN_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let lab = Lab::up(&LabSpec {
        name: unique("cl"),
        nodes: 3,
        migrated: 1,
        pods: 2,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    let cp = lab.node_ns("control-plane");
    let e = |id: &str| lab.endpoint(id).unwrap();
    let pps = 400;
    let streams = [
        ("control-plane/app-1", "worker-2/app-1"),
        ("worker-1/app-1", "control-plane/app-2"),
        ("worker-2/app-2", "worker-1/app-2"),
        ("control-plane/app-2", "worker-1/app-1"),
    ];
    std::thread::scope(|s| {
        for (from, to) in streams {
            let (from, to) = (e(from), e(to));
            s.spawn(move || {
                traffic::udp_stream(&from, &to, pps * (seconds + 12), pps, 200).unwrap()
            });
        }
        // The first window starts once the traffic runs.
        std::thread::sleep(Duration::from_secs(11));
        let end = Instant::now() + Duration::from_secs(seconds);
        let (mut readings, mut packets, mut worst_lateness) = (0, 0u64, 0u64);
        let mut kernel_drops = 0u64;
        let mut in_flight = 0;
        while Instant::now() < end {
            let mut loss = Command::new("ip");
            loss.args(["netns", "exec", &cp, CROSSOVER, "loss", "-o", "json"]);
            loss.args(["--node", "control-plane", "--top", "1000"]);
            loss.args(["--window", "10s", "--sample-interval", "500ms"]);
            for url in &agents.urls {
                loss.args(["--agent", url]);
            }
            let out = loss.output().unwrap();
            assert_eq!(out.status.code(), Some(0), "{out:?}");
            let reading: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let rows = reading["rows"].as_array().unwrap();
            let totals = reading["totals"].as_array().unwrap();
            // Pairs are bracketed: never a packet of phantom loss. in_node
            // is no bracket but the kernel's own drop count: a drop it
            // shows is one the kernel made (a clean lab still meets a rare
            // one, e.g. NOT_SPECIFIED before a tunnel), listed among the
            // reading's drops on that node towards that peer.
            for r in rows {
                if r["signal"] == "in_node" && r["lost"] != 0 {
                    // The reading's own notion of the drops behind a row:
                    // the sender's on the way out, the receiver's coming in.
                    let typed: observer::loss::cluster::ClusterReading =
                        serde_json::from_value(reading.clone()).unwrap();
                    let row: observer::loss::LossRow = serde_json::from_value(r.clone()).unwrap();
                    let behind: u64 = typed.drops_behind(&row).iter().map(|d| d.packets).sum();
                    assert!(
                        behind >= r["lost"].as_u64().unwrap(),
                        "reading {readings}: in_node loss without a kernel drop: {r}\n{reading:#}"
                    );
                    kernel_drops += r["lost"].as_u64().unwrap();
                    continue;
                }
                assert_eq!(r["lost"], 0, "reading {readings}: {r}\n{reading:#}");
            }
            // Totals compare the same instants at both ends (a bracket's
            // slack summed over every pair would hide loss): what is in
            // flight at the window's end, or sent while a read was late,
            // may show, within the reading's own uncertainty, and then
            // starts no drill-down.
            let uncertainty = reading["uncertainty_ms"].as_u64().unwrap();
            let window = reading["to_ms"].as_u64().unwrap() - reading["from_ms"].as_u64().unwrap();
            for t in totals {
                let (lost, sent) = (t["lost"].as_u64().unwrap(), t["sent"].as_u64().unwrap());
                assert!(
                    lost <= (sent * uncertainty).div_ceil(window),
                    "reading {readings}: {t}\n{reading:#}"
                );
                in_flight = in_flight.max(lost);
            }
            assert_eq!(reading["drills"], serde_json::json!([]), "{reading:#}");
            let delivered: u64 = totals
                .iter()
                .filter(|t| t["signal"] == "delivery")
                .map(|t| t["sent"].as_u64().unwrap())
                .sum();
            assert!(delivered > 0, "{reading:#}");
            packets += delivered;
            readings += 1;
            worst_lateness = worst_lateness.max(reading["lateness_ms"].as_u64().unwrap());
            std::thread::sleep(Duration::from_secs(2));
        }
        eprintln!(
            "{readings} readings over {seconds} s, {packets} packets in their windows, no pair \
             lost any, totals at most {in_flight} in flight; reads at most {worst_lateness} ms off \
             their ticks; in_node: {kernel_drops} of the kernel's own drops, summed over readings"
        );
        assert!(readings >= seconds / 4);
        drop(agents);
    });
}

/// Sum of one node's `crossover_tcp_handshakes_total` towards one peer,
/// over every overlay, network pair and outcome.
fn handshakes_towards(body: &str, node: &str, peer: &str) -> u64 {
    let labels = format!("node=\"{node}\",peer_node=\"{peer}\",");
    body.lines()
        .filter(|l| l.starts_with("crossover_tcp_handshakes_total{") && l.contains(&labels))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// TCP to or from the agents' port (`--listen`) is crossover's own
/// control traffic: a reader in a pod (a driver Job, `crossover loss` in a
/// debug pod) whose connections to the agents cross an overlay, as Cilium's
/// tunnel carries pod-to-node traffic. The datapath keeps their TCP events
/// out of the peer counters (counted as `control`), so the gate never
/// judges them, while connections to any other port along the same path
/// count as before. The lab masquerades pod-to-node traffic to the node's
/// address (plain host to host, never in the peer counters), so the
/// connections here go pod to pod, to a server on the agents' port.
#[test]
fn connections_on_the_agents_port_are_not_judged() {
    require_root();
    let lab = Lab::up(&LabSpec {
        name: unique("c"),
        nodes: 2,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    let cp = lab.node_ns("control-plane");
    let (from, to) = (
        lab.endpoint("control-plane/app-1").unwrap(),
        lab.endpoint("worker-1/app-1").unwrap(),
    );
    let metrics = || {
        std::thread::sleep(Duration::from_millis(1500));
        let (status, body) = http_get(&cp, &format!("{}/metrics", agents.urls[0]));
        assert_eq!(status, 200, "{body}");
        body
    };
    let control = |body: &str| -> u64 {
        metric(
            body,
            "crossover_skipped_packets_total{node=\"control-plane\",reason=\"control\"}",
        )
    };
    let before = metrics();

    // Another port: counted.
    let tcp = traffic::tcp_connections(&from, &to, 3, Duration::from_secs(1)).unwrap();
    assert_eq!(tcp.answered, 3);
    let counted = metrics();
    let handshakes = handshakes_towards(&counted, "control-plane", "worker-1");
    assert_eq!(
        handshakes - handshakes_towards(&before, "control-plane", "worker-1"),
        3,
        "{counted}"
    );

    // The agents' port: ten connections, none of them a handshake.
    let tcp =
        traffic::tcp_connections_to_port(&from, &to, PORT, 10, Duration::from_secs(1)).unwrap();
    assert_eq!(tcp.answered, 10);
    let after = metrics();
    assert_eq!(
        handshakes_towards(&after, "control-plane", "worker-1"),
        handshakes,
        "connections on the agents' port are not handshakes the gate judges: {after}"
    );
    // Each connection's SYN, request and FIN out, and their answers in.
    assert!(
        control(&after) >= control(&counted) + 60,
        "control packets counted: {} -> {}",
        control(&counted),
        control(&after)
    );
}

/// A node whose underlay hook runs behind a program crossover cannot get in
/// front of (netlink mode, a classic-BPF filter holding priority 1 for
/// another protocol) is blind there: its agent is not ready and refuses
/// readings, naming the hook, so `crossover loss` reports the node failed
/// rather than its counts, and names its blind hook above the rows (typed
/// in its JSON), while the other node reads as usual.
#[test]
fn a_blind_underlay_is_unready_and_refuses_readings() {
    require_root();
    let lab = Lab::up(&LabSpec {
        name: unique("b"),
        nodes: 2,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let cp = lab.node_ns("control-plane");
    crossover_tests::standin::hold_priority_1(&cp, "eth0", "egress");
    let agents = Agents::spawn_all(&lab, &["--attach-mode", "netlink"]);
    let deadline = Instant::now() + Duration::from_secs(20);
    let why = loop {
        let (status, body) = http_get(&cp, &format!("{}/readyz", agents.urls[0]));
        if status == 503 && body.contains("blind") {
            break body;
        }
        assert!(
            Instant::now() < deadline,
            "never unready for blindness: {status} {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    assert!(why.contains("eth0 egress"), "{why}");
    // worker-1 sees first and is ready.
    let deadline = Instant::now() + Duration::from_secs(20);
    while http_get(&cp, &format!("{}/readyz", agents.urls[1])).0 != 200 {
        assert!(Instant::now() < deadline, "worker-1 never ready");
        std::thread::sleep(Duration::from_millis(200));
    }
    std::thread::sleep(Duration::from_secs(2));
    let out = Command::new("ip")
        .args(["netns", "exec", &cp, CROSSOVER, "loss", "-o", "json"])
        .args(["--agent", &agents.urls[0], "--agent", &agents.urls[1]])
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        text.contains("underlay hook blind (eth0 egress"),
        "the reader names the blind hook: {text}"
    );
    // Typed too: the refusal carries the node's blind hooks, which the
    // reading lists as it lists any node's.
    let reading: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(
        reading["blind"],
        serde_json::json!([{
            "node": "control-plane",
            "counts": [{"hook": "underlay", "direction": "egress", "blind": 1}],
            "named": [{"iface": "eth0", "hook": "underlay", "direction": "egress", "ahead": [0]}],
        }]),
        "{reading:#}"
    );
    // The table says it above the rows, and what it means for them.
    let out = Command::new("ip")
        .args(["netns", "exec", &cp, CROSSOVER, "loss"])
        .args(["--agent", &agents.urls[0], "--agent", &agents.urls[1]])
        .output()
        .unwrap();
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().nth(1).is_some_and(|l| l.starts_with(
            "blind: control-plane: 1 underlay hook (egress) blind; eth0 egress: programs [0] run first"
        )),
        "{table}"
    );
    assert!(
        table.contains(
            "control-plane: every loss signal is counted on its underlay, which runs behind"
        ),
        "{table}"
    );
}

/// `crossover loss` over a window of `window_s` seconds, control-plane's
/// rows exactly, run in namespace `ns`.
fn window_reading(ns: &str, agents: &Agents, window_s: u64) -> serde_json::Value {
    let window = format!("{window_s}s");
    agents.loss_json(
        ns,
        &[
            "--node",
            "control-plane",
            "--top",
            "1000",
            "--window",
            &window,
            "--sample-interval",
            "500ms",
        ],
    )
}

fn unix_ms() -> u64 {
    observer::loss::ring::unix_ms(std::time::SystemTime::now())
}

/// An agent killed mid-soak under a fault and started again over its pins:
/// a window that began before the crash still starts at its own tick (the
/// ticks are kept beside the counters, observer/src/loss/kept.rs), so it
/// counts every packet the wire dropped since, not only those since the
/// restart. Then the kept ticks are corrupted behind a crashed agent's
/// back: the next one refuses them, says so in its status and metrics, and
/// its windows start at its own start.
#[test]
fn a_window_read_after_a_crash_counts_every_loss_since_it_began() {
    let (lab, pins, mut agents, id) = pinned_agents_under_loss("kw", 5.0);
    let cp = lab.node_ns("control-plane");
    // A tick or two before the traffic, inside every agent's ring.
    std::thread::sleep(Duration::from_secs(1));
    let began_ms = unix_ms();
    let e = |id: &str| lab.endpoint(id).unwrap();
    let stream = std::thread::scope(|s| {
        let stream = s.spawn(|| {
            traffic::udp_stream(
                &e("worker-1/app-1"),
                &e("control-plane/app-1"),
                24_000,
                4000,
                200,
            )
            .unwrap()
        });
        // The receiver dies with two thirds of the stream to come.
        std::thread::sleep(Duration::from_secs(2));
        agents.crash_and_restart(&lab, 0);
        stream.join().unwrap()
    });
    // The stream's last packets read by a tick's late read on both sides.
    std::thread::sleep(Duration::from_millis(1500));
    let drops = lab.drops(id).unwrap();
    assert!(drops > 0);
    let status = |agents: &Agents| -> serde_json::Value {
        serde_json::from_str(&http_get(&cp, &format!("{}/api/v1/status", agents.urls[0])).1)
            .unwrap()
    };
    let kept = status(&agents)["kept"].clone();
    assert_eq!(kept["map"], "reused", "{kept:#}");
    assert!(kept["adopted"].as_u64().unwrap() >= 4, "{kept:#}");
    // The slot being written when the process died may be torn, no other.
    assert!(kept["refused"].as_array().unwrap().len() <= 1, "{kept:#}");
    assert!(kept.get("restarted").is_none(), "{kept:#}");

    let window_s = (unix_ms() - began_ms).div_ceil(1000) + 1;
    let reading = window_reading(&cp, &agents, window_s);
    assert!(
        reading["from_ms"].as_u64().unwrap() <= began_ms,
        "the window starts at its own tick, before the crash: {reading:#}"
    );
    let rows = reading["rows"].as_array().unwrap();
    let row = rows
        .iter()
        .find(|r| {
            r["node"] == "worker-1"
                && r["peer_node"] == "control-plane"
                && r["overlay"] == "legacy"
                && r["signal"] == "delivery"
                && r["lost"].as_u64().unwrap() > 0
        })
        .unwrap_or_else(|| panic!("no faulted row in {reading:#}"));
    assert!(row["sent"].as_u64().unwrap() >= stream.sent, "{row}");
    assert_eq!(
        row["lost"].as_u64().unwrap(),
        drops,
        "every packet the wire dropped since the window began: {row}"
    );

    // Kept ticks tampered with while no agent runs: one slot of another
    // format, every other with a byte changed.
    agents.kill(0);
    tamper(&pins.path.join("control-plane/maps/KEPT_TICKS"));
    let restarted_ms = unix_ms();
    agents.restart(&lab, 0);
    let kept = status(&agents)["kept"].clone();
    assert_eq!(kept["adopted"], 0, "{kept:#}");
    let reasons: Vec<&str> = kept["refused"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.contains(&"foreign"), "{kept:#}");
    assert!(reasons.contains(&"corrupt"), "{kept:#}");
    assert!(
        kept["restarted"].as_str().unwrap().contains("refused"),
        "{kept:#}"
    );
    let (_, metrics) = http_get(&cp, &format!("{}/metrics", agents.urls[0]));
    let series = |s: &str| metric::<u64>(&metrics, s);
    assert_eq!(
        series("crossover_window_restarted{node=\"control-plane\"}"),
        1
    );
    assert_eq!(
        series("crossover_window_kept_refused{node=\"control-plane\",reason=\"foreign\"}"),
        1
    );
    assert_eq!(
        series("crossover_window_kept_ticks{node=\"control-plane\",outcome=\"adopted\"}"),
        0
    );
    // Its windows now start at its own start.
    let reading = window_reading(&cp, &agents, window_s);
    assert!(
        reading["from_ms"].as_u64().unwrap() >= restarted_ms - 500,
        "{reading:#}"
    );
    drop(agents);
}

/// Writes over every slot's first page of the pinned kept ticks: the
/// first slot found with bytes of no format, the others with one byte of
/// the header changed.
fn tamper(map: &std::path::Path) {
    use aya::maps::{HashMap, Map, MapData};
    let data = MapData::from_pin(map).unwrap();
    let mut pages: HashMap<MapData, [u32; 2], [u8; observer::datapath::KEPT_PAGE]> =
        Map::HashMap(data).try_into().unwrap();
    let firsts: Vec<[u32; 2]> = pages
        .keys()
        .map(Result::unwrap)
        .filter(|[_, page]| *page == 0)
        .collect();
    assert!(firsts.len() >= 2, "{} slots kept", firsts.len());
    for (i, key) in firsts.iter().enumerate() {
        let mut page = pages.get(key, 0).unwrap();
        if i == 0 {
            page = [0; observer::datapath::KEPT_PAGE];
            page[..4].copy_from_slice(&100u32.to_le_bytes());
        } else {
            // The tick's number, inside the checksum.
            page[4 + 48] ^= 0x40;
        }
        pages.insert(key, page, 0).unwrap();
    }
}

/// A node's own firewall drops 5% of what it sends a peer through the
/// legacy tunnel, inside the node: the wire loses nothing (delivery is
/// underlay to underlay and says 0), and the reading says where and why:
/// dropped on control-plane, on their way to worker-1, by
/// `NETFILTER_DROP`, exactly as many as the firewall's own counter, and
/// the `in_node` signal counts them against what left.
#[test]
fn a_firewall_inside_a_node_is_named_by_the_kernels_drop_reason() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("fw"),
        nodes: 2,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    let cp = lab.node_ns("control-plane");
    let id = lab
        .inject(Fault::Firewall {
            node: "control-plane".into(),
            peer: "worker-1".into(),
            overlay: Overlay::Legacy,
            percent: 5.0,
        })
        .unwrap();
    let e = |id: &str| lab.endpoint(id).unwrap();
    let udp = traffic::udp_stream(
        &e("control-plane/app-1"),
        &e("worker-1/app-1"),
        10_000,
        5000,
        200,
    )
    .unwrap();
    let dropped = lab.drops(id).unwrap();
    lab.clear(id).unwrap();
    assert!(
        (350..=650).contains(&dropped),
        "a twentieth of {}: {dropped}",
        udp.sent
    );
    // The window's end past the last drop.
    std::thread::sleep(Duration::from_millis(1500));

    let window = [
        "--node",
        "control-plane",
        "--window",
        "60s",
        "--sample-interval",
        "500ms",
    ];
    let reading = agents.loss_json(&cp, &window);
    let drops = reading["drops"].as_array().unwrap();
    let firewall: Vec<_> = drops
        .iter()
        .filter(|d| d["reason"] == "NETFILTER_DROP")
        .collect();
    assert_eq!(firewall.len(), 1, "{reading:#}");
    let d = firewall[0];
    assert_eq!(
        (
            &d["node"],
            &d["peer_node"],
            &d["direction"],
            &d["overlay"],
            &d["src_net"],
            &d["dst_net"]
        ),
        (
            &"control-plane".into(),
            &"worker-1".into(),
            &"egress".into(),
            &"legacy".into(),
            &"legacy".into(),
            &"legacy".into()
        ),
        "{reading:#}"
    );
    assert_eq!(d["packets"], dropped, "the firewall's own counter: {d}");
    // Dropped before the NIC: what left the underlay arrived.
    let rows = reading["rows"].as_array().unwrap();
    let delivery = rows
        .iter()
        .find(|r| {
            r["signal"] == "delivery"
                && r["node"] == "control-plane"
                && r["peer_node"] == "worker-1"
                && r["overlay"] == "legacy"
        })
        .unwrap_or_else(|| panic!("{reading:#}"));
    assert_eq!(delivery["lost"], 0, "{delivery}");
    let sent = delivery["sent"].as_u64().unwrap();
    assert!(sent + dropped >= udp.sent, "{delivery} {dropped}");
    // Loss inside the node: the drops against what left plus them.
    let in_node = rows
        .iter()
        .find(|r| {
            r["signal"] == "in_node"
                && r["node"] == "control-plane"
                && r["peer_node"] == "worker-1"
                && r["overlay"] == "legacy"
        })
        .unwrap_or_else(|| panic!("no in_node row: {reading:#}"));
    assert_eq!(in_node["lost"], dropped, "{in_node}");
    let through = in_node["sent"].as_u64().unwrap() - dropped;
    assert!(through >= sent, "{in_node} {delivery}");
    // The signal is the firewall's own rate, to 0.5 pp.
    let ratio = in_node["ratio"].as_f64().unwrap();
    let injected = dropped as f64 / udp.sent as f64;
    assert!((ratio - injected).abs() < 0.005, "{injected}: {in_node}");
    assert!((ratio - 0.05).abs() < 0.01, "5% injected: {in_node}");

    let table = agents.loss(&cp, &[&["-o", "table"], &window[..]].concat());
    assert!(
        table.contains("dropped by the kernel")
            && table
                .lines()
                .any(|l| l.contains("control-plane") && l.contains("NETFILTER_DROP")),
        "{table}"
    );
    // /metrics: the same count, by direction.
    let (_, metrics) = http_get(&cp, &format!("{}/metrics", agents.urls[0]));
    let series = "crossover_drops_total{node=\"control-plane\",reason=\"NETFILTER_DROP\",\
                  peer_node=\"worker-1\",direction=\"egress\",overlay=\"legacy\",\
                  src_net=\"legacy\",dst_net=\"legacy\"}";
    assert_eq!(metric::<u64>(&metrics, series), dropped, "{metrics}");
    drop(agents);
}

/// `crossover loss` about worker-1 over the agents' whole 60 s window.
const WORKER_1_60S: [&str; 6] = [
    "--node",
    "worker-1",
    "--window",
    "60s",
    "--sample-interval",
    "500ms",
];

/// The rows of signal mtu about every node of the 3-node lab, over 60 s,
/// from a reading every agent answered (an agent a tick behind, on a
/// busy machine, is asked again a moment later: a few times at most).
fn mtu_rows(agents: &Agents, ns: &str) -> Vec<serde_json::Value> {
    let mut loss = Command::new("ip");
    loss.args(["netns", "exec", ns, CROSSOVER, "loss", "--format", "json"]);
    loss.args([
        "--signal",
        "mtu",
        "--window",
        "60s",
        "--sample-interval",
        "500ms",
    ]);
    for n in ["control-plane", "worker-1", "worker-2"] {
        loss.args(["--node", n]);
    }
    for url in &agents.urls {
        loss.args(["--agent", url]);
    }
    for _ in 0..5 {
        let out = loss.output().unwrap();
        if out.status.success() {
            let reading: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            return reading["rows"].as_array().unwrap().clone();
        }
        // 2: printed with an agent missing; anything else is an error.
        assert_eq!(out.status.code(), Some(2), "{out:?}");
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no reading every agent answered, in five tries");
}

/// An MTU black hole between worker-1 and worker-2 on the Cilium overlay
/// (the wire drops that tunnel's packets over 1450 bytes, both ways, no
/// ICMP): with probes on, the agents name it as an MTU problem within 5 s,
/// on that node pair and overlay only, with the size that fits: the
/// 1450-byte large probes are lost, 1400-byte packets (1450 on the wire
/// once VXLAN's 50 bytes are added) pass. Every other pair and overlay
/// keeps its large probes.
#[test]
fn an_mtu_black_hole_is_named_on_its_pair_and_overlay_with_the_size_that_fits() {
    require_root();
    let (mut lab, agents) = Agents::probed_lab("mtu");
    let cp = lab.node_ns("control-plane");
    let mtu_rows = || mtu_rows(&agents, &cp);
    // Before the fault: every pair's large probes on both overlays pass
    // at the overlay's MTU (a lab whose large probes did not fit would
    // fail here, not pass below).
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let rows = mtu_rows();
        let answered: std::collections::BTreeSet<String> = rows
            .iter()
            .filter(|r| r["sent"].as_u64() > Some(0) && r["peer_node"] != "*" && r["node"] != "*")
            .map(pair_name)
            .collect();
        for r in &rows {
            assert_eq!(r["lost"], 0, "large probes lost without a fault: {r}");
            if r["peer_node"] != "*" && r["node"] != "*" {
                assert_eq!(r["mtu"]["probed"], 1450, "{r}");
            }
        }
        // 3 nodes x 2 peers x 2 overlays.
        if answered.len() == 12 {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "large probes answered on {answered:?} only"
        );
        std::thread::sleep(Duration::from_millis(500));
    }

    let id = lab.inject(mtu::black_hole()).unwrap();
    let injected = Instant::now();
    let pair = mtu::PAIR;
    let (rows, took) = loop {
        let rows = mtu_rows();
        let named = rows.iter().any(|r| {
            pair.contains(&pair_name(r).as_str())
                && r["lost"].as_u64() > Some(0)
                && r["mtu"]["fits"].is_u64()
        });
        let took = injected.elapsed();
        if named {
            break (rows, took);
        }
        assert!(
            took < Duration::from_secs(10),
            "no MTU black hole named after {took:?}: {rows:#?}"
        );
        std::thread::sleep(Duration::from_millis(250));
    };
    eprintln!("named after {took:?}");
    assert!(took <= Duration::from_secs(5), "named after {took:?}");
    let check = |rows: &[serde_json::Value]| {
        for r in rows {
            if r["peer_node"] == "*" || r["node"] == "*" {
                continue;
            }
            if !pair.contains(&pair_name(r).as_str()) {
                assert_eq!(r["lost"], 0, "only the faulted pair and overlay: {r}");
                assert!(r["mtu"].get("fits").is_none(), "{r}");
            } else if r["mtu"]["fits"].is_u64() {
                assert_eq!(r["mtu"]["probed"], 1450, "{r}");
                // 1450 on the wire less VXLAN's 50 bytes: the ladder ends
                // on the exact size.
                assert_eq!(r["mtu"]["fits"], 1400, "{r}");
            }
        }
    };
    check(&rows);
    // Both ends of the pair find it (each end's own probes and ladder).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let rows = mtu_rows();
        check(&rows);
        let found = rows
            .iter()
            .filter(|r| pair.contains(&pair_name(r).as_str()) && r["mtu"]["fits"] == 1400)
            .count();
        if found == 2 {
            break;
        }
        assert!(Instant::now() < deadline, "{rows:#?}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert!(lab.drops(id).unwrap() > 0, "the wire dropped large packets");

    // The table names it the way an SRE reads it.
    let table = agents.loss(&cp, &WORKER_1_60S);
    assert!(mtu::table_names_black_hole(&table), "{table}");
    // /metrics: the size probed and the size that fits.
    let (_, metrics) = http_get(&cp, &format!("{}/metrics", agents.urls[1]));
    let series = "crossover_path_mtu_bytes{node=\"worker-1\",peer_node=\"worker-2\",\
                  overlay=\"cilium\",dst_net=\"host\",signal=\"mtu\",kind=\"fits\"}";
    let fits: Option<u64> = metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).and_then(|v| v.trim().parse().ok()));
    // worker-1's own probes may be between two ladders: either the size
    // that fits or none yet, never another.
    assert!(matches!(fits, None | Some(1400)), "{metrics}");
    let ladder: u64 = metric(
        &metrics,
        "crossover_probe_mtu_ladder_packets_total{node=\"worker-1\"}",
    );
    assert!(
        (1..=72).contains(&ladder),
        "one or two searches' rungs: {ladder}"
    );
    lab.clear(id).unwrap();
    drop(agents);
}

/// The lab's other MTU fault, one node's Cilium overlay device lowered
/// to 1300, is no black hole: the node's kernel drops its first oversize
/// DF packet and answers ICMP fragmentation needed. The agents see that:
/// worker-1's large probes are answered by ICMP (counted, with the
/// next-hop MTU 1300, refused rather than lost) and then sized to the
/// route's new MTU; no row names an MTU black hole.
#[test]
fn a_lowered_overlay_mtu_answers_icmp_and_is_no_black_hole() {
    require_root();
    let (mut lab, agents) = Agents::probed_lab("mtui");
    let cp = lab.node_ns("control-plane");
    let id = lab
        .inject(Fault::Mtu {
            node: "worker-1".into(),
            overlay: Overlay::Cilium,
            mtu: 1300,
        })
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(15);
    let rows = loop {
        let rows = mtu_rows(&agents, &cp);
        let told = rows.iter().any(|r| {
            pair_name(r) == "worker-1 -> worker-2 cilium"
                && r["mtu"]["icmp_frag_needed"].as_u64() > Some(0)
                && r["mtu"]["probed"] == 1300
                && r["sent"].as_u64() > Some(0)
        });
        if told {
            break rows;
        }
        assert!(Instant::now() < deadline, "{rows:#?}");
        std::thread::sleep(Duration::from_millis(500));
    };
    for r in &rows {
        assert!(r["mtu"].get("fits").is_none(), "no black hole: {r}");
        if r["node"] == "worker-1" && r["overlay"] == "cilium" && r["peer_node"] != "*" {
            assert_eq!(r["mtu"]["icmp_next_hop"], 1300, "{r}");
            assert!(r["refused"].as_u64() > Some(0), "answered by ICMP: {r}");
        }
    }
    let table = agents.loss(&cp, &WORKER_1_60S);
    assert!(!table.contains("MTU black hole"), "{table}");
    let (_, metrics) = http_get(&cp, &format!("{}/metrics", agents.urls[1]));
    let series = "crossover_probe_icmp_frag_needed_total{node=\"worker-1\",peer_node=\"worker-2\",\
                  overlay=\"cilium\",dst_net=\"host\",signal=\"mtu\"}";
    assert!(metric::<u64>(&metrics, series) > 0, "{metrics}");
    lab.clear(id).unwrap();
    drop(agents);
}
