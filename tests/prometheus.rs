//! Prometheus as the engine: the shipped rules (manifests/monitoring/
//! prometheusrule.yaml) through promtool, and a real Prometheus server
//! scraping the lab's agents with those rules loaded, against the wire's
//! drop counter. The lab test needs root (namespaces, programs in the
//! kernel); the promtool test does not.
use std::{
    collections::BTreeSet,
    path::{Path, PathBuf},
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use crossover_tests::{
    agents::{Agents, CROSSOVER},
    kubelab::within,
    lab::{Fault, Lab, LabSpec, Overlay, traffic},
    mtu::{self, pair_name},
    netns::{Netns, http_get, unique},
    prometheus::{
        PROMETHEUS_PORT, Server, check_documented, dashboard_queries, dashboard_variable_metrics,
        documented, metric_names, promtool, recorded_names, servicemonitor_target_labels,
        write_rules_file, write_rules_file_at,
    },
    require_root,
};
use serde_json::Value;

fn temp_dir(prefix: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(unique(prefix));
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn unit_tests() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("prometheus/rules_test.yml")
}

#[test]
fn shipped_rules_pass_promtool_check_and_unit_tests() {
    let dir = temp_dir("rules");
    write_rules_file(&dir);
    std::fs::copy(unit_tests(), dir.join("rules_test.yml")).unwrap();
    let checked = promtool(&dir, &["check", "rules", "crossover.rules.yml"]).unwrap();
    assert!(checked.contains("SUCCESS"), "{checked}");
    let tested = promtool(&dir, &["test", "rules", "rules_test.yml"]).unwrap();
    assert!(tested.contains("SUCCESS"), "{tested}");

    // The unit tests can fail: the loss alert at 10% instead of 1% no
    // longer fires on the 5% and 2% pairs.
    let rules = std::fs::read_to_string(dir.join("crossover.rules.yml")).unwrap();
    let loosened = rules.replace("} > 0.01", "} > 0.1");
    assert_ne!(
        loosened, rules,
        "the loss alert's threshold moved: update this test"
    );
    std::fs::write(dir.join("crossover.rules.yml"), loosened).unwrap();
    let failed = promtool(&dir, &["test", "rules", "rules_test.yml"]).unwrap_err();
    assert!(
        failed.to_string().contains("CrossoverNodePairLoss"),
        "{failed}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

fn unix_now() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64()
}

fn label<'a>(series: &'a Value, name: &str) -> &'a str {
    series[name].as_str().unwrap_or_default()
}

#[test]
fn prometheus_with_the_shipped_rules_finds_the_faulted_pair() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("pm"),
        nodes: 3,
        migrated: 1,
        pods: 2,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start(&lab);
    let dir = temp_dir("prometheus");
    write_rules_file(&dir);
    let server = Server::on_lab(&lab, &dir).unwrap();

    // 5% of control-plane's packets to worker-1 (migrated) on the Cilium
    // overlay, from before the traffic to after the reading.
    let fault = lab
        .inject(Fault::Loss {
            from: "control-plane".into(),
            to: "worker-1".into(),
            overlay: Overlay::Cilium,
            percent: 5.0,
        })
        .unwrap();
    // And worker-2's own firewall drops 5% of what it sends control-plane
    // on the legacy overlay: loss inside a node, not on the wire.
    let firewall = lab
        .inject(Fault::Firewall {
            node: "worker-2".into(),
            peer: "control-plane".into(),
            overlay: Overlay::Legacy,
            percent: 5.0,
        })
        .unwrap();
    let e = |id: &str| lab.endpoint(id).unwrap();
    // Steady streams (300 packets/s, 80 s): legacy to Cilium over the
    // fault, Cilium to legacy, legacy to legacy through the firewall,
    // daemonset pods.
    let streams = [
        (e("control-plane/app-1"), e("worker-1/app-1")),
        (e("worker-1/app-2"), e("worker-2/app-1")),
        (e("worker-2/app-2"), e("control-plane/app-2")),
        (e("worker-1/ds"), e("control-plane/ds")),
    ];
    let start = Instant::now();
    // The rules' 1m window at `at` lies inside the traffic: from 10 s to
    // 70 s after it started. The drop counter is read at both edges.
    let (drops, dropped_inside, at, readings) = std::thread::scope(|s| {
        for (from, to) in &streams {
            s.spawn(move || traffic::udp_stream(from, to, 300 * 80, 300, 200).unwrap());
        }
        std::thread::sleep(Duration::from_secs(10).saturating_sub(start.elapsed()));
        let before = (lab.drops(fault).unwrap(), lab.drops(firewall).unwrap());
        std::thread::sleep(Duration::from_secs(70).saturating_sub(start.elapsed()));
        let (after, at) = (
            (lab.drops(fault).unwrap(), lab.drops(firewall).unwrap()),
            unix_now(),
        );
        // A scrape and an evaluation past `at`, traffic still running.
        std::thread::sleep(Duration::from_secs(3));
        // `crossover loss --prometheus`: the same records, summed over the
        // last one and two minutes (the second reaches before the
        // traffic, whose first minute the rules leave out).
        let readings = ["1m", "2m"].map(|w| loss_from_prometheus(&lab, w));
        (after.0 - before.0, after.1 - before.1, at, readings)
    });

    let faulted = |s: &Value| {
        label(s, "node") == "control-plane"
            && label(s, "peer_node") == "worker-1"
            && label(s, "overlay") == "cilium"
    };
    let inside = |s: &Value| {
        label(s, "node") == "worker-2"
            && label(s, "peer_node") == "control-plane"
            && label(s, "signal") == "in_node"
    };
    let one = |expr: &str| -> f64 {
        let found = server.query(expr, at).unwrap();
        assert_eq!(found.len(), 1, "{expr}: {found:?}\n{}", server.log());
        found[0].1
    };
    let pair = r#"node="control-plane",peer_node="worker-1",overlay="cilium",signal="delivery""#;
    let ratio = one(&format!("crossover:pair_overlay_loss_ratio:1m{{{pair}}}"));
    let sent = one(&format!("crossover:pair_overlay_sent:increase1m{{{pair}}}"));
    let lost = one(&format!("crossover:pair_overlay_lost:increase1m{{{pair}}}"));
    let wire = drops as f64 / sent;
    eprintln!(
        "faulted pair over 1m: sent {sent:.0}, lost {lost:.1}, ratio {:.3}%; the wire dropped {drops} ({:.3}%)",
        ratio * 100.0,
        wire * 100.0
    );
    // A minute of 300 packets/s: about 18,000 sent, 900 dropped.
    assert!(sent > 15_000.0, "{sent}");
    assert!(
        (ratio - wire).abs() <= 0.005,
        "the rule's {ratio} against the wire's {wire}"
    );

    // Loss inside worker-2, from its kernel's drops: the firewall's rate.
    let inside_pair =
        r#"node="worker-2",peer_node="control-plane",overlay="legacy",signal="in_node""#;
    let inside_sent = one(&format!(
        "crossover:pair_overlay_sent:increase1m{{{inside_pair}}}"
    ));
    let inside_ratio = one(&format!(
        "crossover:pair_overlay_loss_ratio:1m{{{inside_pair}}}"
    ));
    let firewall_rate = dropped_inside as f64 / inside_sent;
    eprintln!(
        "in_node worker-2 -> control-plane over 1m: ratio {:.3}%; the firewall dropped {dropped_inside} ({:.3}%)",
        inside_ratio * 100.0,
        firewall_rate * 100.0
    );
    assert!(
        (inside_ratio - firewall_rate).abs() <= 0.005,
        "the rule's {inside_ratio} against the firewall's {firewall_rate}"
    );

    for (window, reading) in ["1m", "2m"].iter().zip(&readings) {
        // The drop behind it, named, from Prometheus too.
        let named = reading["drops"].as_array().unwrap().iter().any(|d| {
            d["node"] == "worker-2"
                && d["peer_node"] == "control-plane"
                && d["direction"] == "egress"
                && d["reason"] == "NETFILTER_DROP"
                && d["packets"].as_u64().unwrap_or(0) > 0
        });
        assert!(named, "--window {window}: no firewall drop in {reading:#}");
        let rows = reading["rows"].as_array().unwrap();
        // The stream's network pair: the faulted pair's busiest.
        let row = rows
            .iter()
            .filter(|r| faulted(r) && r["signal"] == "delivery")
            .max_by_key(|r| r["sent"].as_u64())
            .unwrap_or_else(|| panic!("--window {window}: no faulted row in {reading:#}"));
        let (sent, lost) = (row["sent"].as_f64().unwrap(), row["lost"].as_f64().unwrap());
        eprintln!("crossover loss --prometheus --window {window}: {lost} of {sent} lost");
        assert!(sent > 15_000.0, "{row}");
        assert!((lost / sent - wire).abs() <= 0.005, "{row} against {wire}");
        assert_eq!(reading["answered"], 3, "{reading:#}");
        // Two minutes reach the streams' start, where each end's series
        // first appears at its own scrape: the rules leave a series' first
        // minute out, so that shows as nothing rather than as loss.
        for r in rows.iter().filter(|r| !faulted(r) && !inside(r)) {
            let (sent, lost) = (r["sent"].as_f64().unwrap(), r["lost"].as_f64().unwrap());
            assert!(lost <= sent * 0.001, "--window {window}: {r}");
        }
    }

    // The loss alert holds for the two faulted pairs alone (pending: it
    // waits 3 minutes before firing, longer than this test).
    let alerts = server
        .query(
            r#"ALERTS{alertname=~"CrossoverNodePairLoss|CrossoverProbesFailing"}"#,
            at,
        )
        .unwrap();
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    for (alert, _) in &alerts {
        assert!(
            (faulted(alert) && alert["signal"] == "delivery") || inside(alert),
            "{alert}"
        );
        assert_eq!(alert["alertstate"], "pending", "{alert}");
    }

    // Every other node pair and overlay, and every network pair of the
    // faulted one but the stream's, stays under 0.1%.
    let others = server
        .query("crossover:pair_overlay_loss_ratio:1m", at)
        .unwrap();
    let clean: Vec<_> = others
        .iter()
        .filter(|(s, _)| !faulted(s) && !inside(s))
        .collect();
    for (series, ratio) in &clean {
        eprintln!("{series}: {:.4}%", ratio * 100.0);
        assert!(ratio.abs() < 0.001, "{series}: {ratio}");
    }
    assert!(
        clean.len() >= 3,
        "the other streams' pairs are missing: {others:?}"
    );

    // No label of the agents' series collided with a target label
    // (Prometheus would keep the series' own as exported_<name>), and
    // each agent's own `node` is the node its target is.
    let labels = server.label_names().unwrap();
    assert!(
        labels.iter().all(|l| !l.starts_with("exported_")),
        "{labels:?}"
    );
    let build = server.query("crossover_build_info", unix_now()).unwrap();
    assert_eq!(build.len(), lab.nodes().count(), "{build:?}");
    for (series, _) in &build {
        for (target, value) in servicemonitor_target_labels(label(series, "node")) {
            assert_eq!(label(series, &target), value, "{series}");
        }
    }

    // Every dashboard query runs on the real server; the node-pair matrix
    // of the Cilium overlay shows the faulted pair's figure.
    for (panel, expr) in dashboard_queries() {
        server
            .query(&expr, at)
            .unwrap_or_else(|e| panic!("panel {panel:?}: {e}"));
    }
    let matrix = dashboard_queries()
        .into_iter()
        .find(|(panel, _)| panel.starts_with("Node-pair loss"))
        .unwrap()
        .1;
    let cells = server.query(&matrix, at).unwrap();
    let cell = cells
        .iter()
        .find(|(s, _)| label(s, "node") == "control-plane" && label(s, "peer_node") == "worker-1")
        .unwrap_or_else(|| panic!("{matrix}: {cells:?}"));
    assert_eq!(cell.1, ratio);

    // Every family an agent serves is in the metrics reference, with its
    // labels.
    let (status, body) = http_get(
        &lab.node_ns("control-plane"),
        &format!("{}/metrics", agents.urls[1]),
    );
    assert_eq!(status, 200);
    check_documented(&body);

    drop(server);
    lab.clear(fault).unwrap();
    lab.clear(firewall).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `crossover loss --prometheus` over `window`, run where Prometheus is,
/// for control-plane's rows exactly: its JSON.
fn loss_from_prometheus(lab: &Lab, window: &str) -> Value {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.underlay_ns(), CROSSOVER, "loss"])
        .args([
            "--prometheus",
            &format!("http://127.0.0.1:{PROMETHEUS_PORT}"),
        ])
        .args([
            "--window",
            window,
            "--node",
            "control-plane",
            "--format",
            "json",
        ])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    serde_json::from_slice(&out.stdout).unwrap()
}

/// What a dashboard query may select: a family the agent serves (as
/// documented; the lab test checks the documentation against a real
/// agent), a histogram's series, a record of the shipped rules, or `up`.
fn selectable() -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for (name, doc) in documented() {
        if doc.kind == "histogram" {
            for suffix in ["_bucket", "_sum", "_count"] {
                names.insert(format!("{name}{suffix}"));
            }
        }
        names.insert(name);
    }
    names.extend(recorded_names());
    names.insert("up".into());
    names
}

#[test]
fn dashboard_queries_use_only_served_or_recorded_metrics() {
    // The parser finds selectors wherever they are nested.
    let found = metric_names(
        "histogram_quantile(0.99, sum by (le) (rate(a_bucket[1m]))) / on (x) group_left b{y=\"1\"} > 0",
    )
    .unwrap();
    assert_eq!(found, BTreeSet::from(["a_bucket".into(), "b".into()]));
    assert!(metric_names("sum(").is_err());

    let allowed = selectable();
    let queries = dashboard_queries();
    assert!(queries.len() >= 15, "{queries:?}");
    let mut used = BTreeSet::new();
    for (panel, expr) in &queries {
        for name in metric_names(expr).unwrap_or_else(|e| panic!("panel {panel:?}: {e}")) {
            assert!(
                allowed.contains(&name),
                "panel {panel:?} selects {name:?}, which neither the agent serves nor a rule records"
            );
            used.insert(name);
        }
    }
    for name in dashboard_variable_metrics() {
        assert!(
            allowed.contains(&name),
            "a variable lists values of {name:?}"
        );
    }
    // The panels the dashboard is for: the node-pair matrix, loss per
    // signal and network pair, the migration, the agents.
    for name in [
        "crossover:pair_overlay_loss_ratio:1m",
        "crossover:net_pair_loss_ratio:1m",
        "crossover_node_migrating",
        "crossover_migration_phase",
        "crossover_migration_nodes",
        "crossover_migration_step",
        "crossover_migration_gate_decisions_total",
        "crossover_newest_tick_timestamp_seconds",
        "up",
    ] {
        assert!(used.contains(name), "no panel shows {name}");
    }
}

/// `crossover loss --prometheus` against `url`, run in `ns`: its exit
/// status and what it printed (stdout, stderr).
fn loss_at(ns: &str, url: &str) -> (Option<i32>, String, String) {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", ns, CROSSOVER, "loss", "--prometheus", url])
        .args(["--node", "n1", "--format", "json"])
        .output()
        .unwrap();
    let text = |b: &[u8]| String::from_utf8_lossy(b).into_owned();
    (out.status.code(), text(&out.stdout), text(&out.stderr))
}

/// A real Prometheus that cannot give a reading: without crossover's
/// rules it is an error naming them; with them but scraping nothing, the
/// reading is incomplete (exit status 2) with every reason listed, never
/// an empty, lossless one. Needs root (a network namespace).
#[test]
fn a_prometheus_without_rules_or_agents_gives_no_lossless_reading() {
    require_root();
    let ns = Netns::new("pe");
    let url = format!("http://127.0.0.1:{PROMETHEUS_PORT}");
    let config = |rules: bool| {
        serde_json::json!({
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": if rules { vec!["crossover.rules.yml"] } else { vec![] },
        })
        .to_string()
    };

    let dir = temp_dir("norules");
    let server = Server::start(&ns.name, &dir, &config(false), PROMETHEUS_PORT).unwrap();
    let (code, _, said) = loss_at(&ns.name, &url);
    assert_eq!(code, Some(1), "{said}");
    assert!(
        said.contains(&format!(
            "Prometheus at {url}: no recording rule crossover:signal_sent:increase<window>"
        )),
        "{said}"
    );
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();

    let dir = temp_dir("notargets");
    write_rules_file(&dir);
    let server = Server::start(&ns.name, &dir, &config(true), PROMETHEUS_PORT).unwrap();
    // Until the group has run once: an error; then, nothing recorded.
    let ((out, said), _) = within(Duration::from_secs(10), "an evaluated group", || {
        let (code, out, said) = loss_at(&ns.name, &url);
        (code == Some(2)).then_some((out, said))
    });
    let reading: Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}\n{said}"));
    let failed = reading["failed"].to_string();
    for why in [
        "no sample of crossover:signal_sent:increase1m",
        "no record of node n1's pairs",
        "no target of job crossover-agent",
    ] {
        assert!(failed.contains(why), "{why}: {reading:#}");
    }
    assert_eq!(reading["answered"], 0);
    drop(server);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// Past `--metrics-peer-detail` nodes an agent sums every peer not under
/// migration into `peer_node="*"`: what the rules cannot join (and
/// exclude). A 3-node lab read as if it were large.
#[test]
fn past_the_detail_limit_peers_are_summed_into_a_star() {
    require_root();
    let mut lab = Lab::up(&LabSpec {
        name: unique("pd"),
        nodes: 3,
        migrated: 1,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    let agents = Agents::start_with(&lab, &["--metrics-peer-detail", "2"]);
    let e = |id: &str| lab.endpoint(id).unwrap();
    for to in ["worker-1/app-1", "worker-2/app-1"] {
        traffic::udp_stream(&e("control-plane/app-1"), &e(to), 200, 1000, 200).unwrap();
    }
    std::thread::sleep(Duration::from_secs(2));
    let (status, body) = http_get(
        &lab.node_ns("control-plane"),
        &format!("{}/metrics", agents.urls[0]),
    );
    assert_eq!(status, 200);
    let egress: Vec<&str> = body
        .lines()
        .filter(|l| {
            l.starts_with("crossover_underlay_packets_total{") && l.contains("direction=\"egress\"")
        })
        .collect();
    assert!(!egress.is_empty(), "{body}");
    for line in &egress {
        assert!(line.contains("peer_node=\"*\""), "{line}");
    }
    // Both peers' 200 datagrams, in the sums.
    let sent: u64 = egress
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert!(sent >= 400, "{egress:?}");
    drop(agents);
    lab.clear_all().unwrap();
}

/// A node whose underlay hook runs behind another program (held at
/// priority 1 in netlink mode, as in tests/agent.rs) is blind: a reading
/// from Prometheus lists its blind hook as a reading of the agents does,
/// names the node failed, and leaves every pair of it out of the rows
/// (its agent's figures are not what crossed its NIC), while the other
/// pairs read as usual. Rules at a 10 s record window, for a short test.
#[test]
fn a_blind_underlay_is_left_out_of_a_prometheus_reading() {
    require_root();
    let lab = Lab::up(&LabSpec {
        name: unique("pb"),
        nodes: 3,
        migrated: 0,
        pods: 1,
        ..LabSpec::default()
    })
    .unwrap()
    .remove_on_drop();
    crossover_tests::standin::hold_priority_1(&lab.node_ns("worker-1"), "eth0", "egress");
    let agents = Agents::spawn_all(&lab, &["--attach-mode", "netlink"]);
    let dir = temp_dir("prometheus-blind");
    write_rules_file_at(&dir, "10s");
    let server = Server::on_lab(&lab, &dir).unwrap();
    let e = |id: &str| lab.endpoint(id).unwrap();
    let streams = [
        (e("control-plane/app-1"), e("worker-1/app-1")),
        (e("worker-1/app-1"), e("control-plane/app-1")),
        (e("control-plane/app-1"), e("worker-2/app-1")),
        (e("worker-2/app-1"), e("control-plane/app-1")),
    ];
    let reading = std::thread::scope(|s| {
        for (from, to) in &streams {
            s.spawn(move || traffic::udp_stream(from, to, 100 * 40, 100, 200).unwrap());
        }
        // Two record windows of traffic, then read while it runs.
        let ((reading, _), _) = within(Duration::from_secs(40), "worker-2's rows", || {
            std::thread::sleep(Duration::from_secs(2));
            let out = std::process::Command::new("ip")
                .args(["netns", "exec", &lab.underlay_ns(), CROSSOVER, "loss"])
                .args(["--prometheus", server.url()])
                .args(["--window", "10s", "--format", "json"])
                .output()
                .unwrap();
            let reading: Value = serde_json::from_slice(&out.stdout).ok()?;
            let rows = reading["rows"].as_array()?;
            rows.iter()
                .any(|r| r["node"] == "worker-2" || r["peer_node"] == "worker-2")
                .then_some((reading, ()))
        });
        reading
    });
    assert_eq!(
        reading["blind"],
        serde_json::json!([{
            "node": "worker-1",
            "counts": [{"hook": "underlay", "direction": "egress", "blind": 1}],
            "named": [],
        }]),
        "{reading:#}"
    );
    let failed = reading["failed"].to_string();
    assert!(
        failed.contains("worker-1: its underlay ran behind another program"),
        "{reading:#}"
    );
    for row in reading["rows"].as_array().unwrap() {
        assert!(
            row["node"] != "worker-1" && row["peer_node"] != "worker-1",
            "a pair of the blind node: {row}"
        );
    }
    drop(server);
    drop(agents);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// `crossover loss --prometheus` about worker-1, signal mtu, over the
/// rules' 10 s records: its JSON, once it parses.
fn mtu_from_prometheus(lab: &Lab, server: &Server, format: &str) -> Option<String> {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", &lab.underlay_ns(), CROSSOVER, "loss"])
        .args(["--prometheus", server.url()])
        .args(["--window", "10s", "--node", "worker-1", "--signal", "mtu"])
        .args(["--format", format])
        .output()
        .unwrap();
    // 2: printed with a part missing (a series younger than two windows).
    matches!(out.status.code(), Some(0 | 2)).then(|| String::from_utf8(out.stdout).unwrap())
}

/// What the large probes know of their path reaches a reading from
/// Prometheus as it reaches a reading of the agents: an MTU black hole
/// between worker-1 and worker-2 on the Cilium overlay (the wire drops
/// that tunnel's packets over 1450 bytes, both ways, no ICMP) is named on
/// that pair and overlay only, with the size probed (1450) and the size
/// that fits (1400: 1450 on the wire less VXLAN's 50), in the rows'
/// `mtu`, in the table's words and in the gate's halt message; every
/// other pair's large probes pass at 1450 with nothing that fits named.
/// Then worker-1's Cilium overlay
/// device lowered to 1300 answers ICMP fragmentation needed: its rows
/// carry the next-hop MTU and the count, and no black hole. Rules at a
/// 10 s record window, for a short test. Needs root.
#[test]
fn an_mtu_black_hole_read_from_prometheus_is_named_with_the_size_that_fits() {
    require_root();
    let (mut lab, agents) = Agents::probed_lab("pmtu");
    let dir = temp_dir("prometheus-mtu");
    write_rules_file_at(&dir, "10s");
    let server = Server::on_lab(&lab, &dir).unwrap();
    let rows = |lab: &Lab| -> Option<Vec<Value>> {
        let reading: Value = serde_json::from_str(&mtu_from_prometheus(lab, &server, "json")?)
            .unwrap_or_else(|e| panic!("{e}"));
        reading["rows"].as_array().cloned()
    };
    // worker-1's pairs, both ways, both overlays.
    let about_worker_1 = |rows: &[Value]| -> BTreeSet<String> {
        rows.iter()
            .filter(|r| r["node"] == "worker-1" || r["peer_node"] == "worker-1")
            .filter(|r| r["mtu"]["probed"].as_u64().is_some())
            .map(pair_name)
            .collect()
    };
    // Before the fault: every pair about worker-1 probes at 1450 and
    // names nothing that fits.
    let (before, _) = within(Duration::from_secs(40), "worker-1's large probes", || {
        let rows = rows(&lab)?;
        (about_worker_1(&rows).len() == 8).then_some(rows)
    });
    for r in &before {
        assert_eq!(r["mtu"]["probed"], 1450, "{r}");
        assert!(r["mtu"].get("fits").is_none(), "{r}");
        assert_eq!(r["lost"], 0, "large probes lost without a fault: {r}");
    }

    let blackhole = lab.inject(mtu::black_hole()).unwrap();
    let pair = mtu::PAIR;
    // The gate reading Prometheus about worker-1 judges these rows: its
    // halt message names the black hole the same way, once the window
    // holds enough large probes to judge (5: one a second, 10 s window).
    // The rows can name the size that fits a probe or two before that.
    let gate_names_it = |said: &[String]| {
        said.iter().any(|b| {
            b.contains("; MTU black hole on worker-")
                && b.contains(", cilium overlay: 1450-byte packets lost, 1400 pass")
        })
    };
    let ((named, table, said), took) =
        within(Duration::from_secs(40), "the black hole named", || {
            let rows = rows(&lab)?;
            let found = rows
                .iter()
                .filter(|r| pair.contains(&pair_name(r).as_str()) && r["mtu"]["fits"] == 1400)
                .count();
            let table = mtu_from_prometheus(&lab, &server, "table")?;
            let said = mtu::gate_says(&serde_json::json!({ "rows": rows }), "worker-1");
            (found == 2 && table.contains("MTU black hole") && gate_names_it(&said))
                .then_some((rows, table, said))
        });
    eprintln!("named from Prometheus after {took:?}: {said:#?}");
    for r in &named {
        assert_eq!(r["mtu"]["probed"], 1450, "{r}");
        if pair.contains(&pair_name(r).as_str()) {
            assert_eq!(r["mtu"]["fits"], 1400, "{r}");
            assert!(r["lost"].as_u64() > Some(0), "{r}");
        } else {
            assert!(r["mtu"].get("fits").is_none(), "only the faulted pair: {r}");
        }
    }
    assert!(mtu::table_names_black_hole(&table), "{table}");
    assert!(
        lab.drops(blackhole).unwrap() > 0,
        "the wire dropped large packets"
    );
    lab.clear(blackhole).unwrap();

    let lowered = lab
        .inject(Fault::Mtu {
            node: "worker-1".into(),
            overlay: Overlay::Cilium,
            mtu: 1300,
        })
        .unwrap();
    let (told, _) = within(Duration::from_secs(40), "ICMP fragmentation needed", || {
        let rows = rows(&lab)?;
        let told = rows.iter().find(|r| {
            pair_name(r) == "worker-1 -> worker-2 cilium"
                && r["mtu"]["icmp_frag_needed"].as_u64() > Some(0)
                && r["mtu"]["probed"] == 1300
                && r["mtu"].get("fits").is_none()
        })?;
        Some(told.clone())
    });
    assert_eq!(told["mtu"]["icmp_next_hop"], 1300, "{told}");
    let table = mtu_from_prometheus(&lab, &server, "table").unwrap();
    assert!(!table.contains("MTU black hole"), "{table}");
    lab.clear(lowered).unwrap();
    drop(server);
    drop(agents);
    std::fs::remove_dir_all(&dir).unwrap();
}

/// What ICMP told of the nodes' own traffic reaches a reading from
/// Prometheus as it reaches a reading of the agents: behind a router's
/// MTU black hole ([`mtu::router_black_hole`], a Calico CrossSubnet lab
/// whose router has 1400 towards worker-1's subnet, the control plane's
/// tunnel setting DF), streams from the control plane's pod to worker-1's
/// stall, dropped on the control plane as NOT_SPECIFIED; the router's
/// ICMP is the only trace of why. Read from Prometheus, the pair's mtu
/// row carries the messages and the size that fits (1350), and the gate's
/// halt message for the in_node loss says it. Rules at a 10 s record
/// window, for a short test. Needs root.
#[test]
fn a_routers_icmp_read_from_prometheus_says_why_the_node_dropped() {
    require_root();
    let lab = mtu::cross_subnet_lab(unique("prtr"))
        .unwrap()
        .remove_on_drop();
    let agents = Agents::start(&lab);
    let dir = temp_dir("prometheus-router");
    write_rules_file_at(&dir, "10s");
    let server = Server::on_lab(&lab, &dir).unwrap();
    mtu::router_black_hole(&lab).unwrap();
    let streams = mtu::StallingStreams::start(&lab).unwrap();
    let reading = || -> Option<Value> {
        let out = std::process::Command::new("ip")
            .args(["netns", "exec", &lab.underlay_ns(), CROSSOVER, "loss"])
            .args(["--prometheus", server.url()])
            .args(["--window", "30s", "--node", "control-plane"])
            .args(["--format", "json"])
            .output()
            .unwrap();
        // 2: printed with a part missing (a series younger than two windows).
        matches!(out.status.code(), Some(0 | 2))
            .then(|| serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{e}")))
    };
    let ((row, said), took) = within(Duration::from_secs(60), "the router's ICMP said", || {
        let reading = reading()?;
        let row = reading["rows"].as_array()?.iter().find(|r| {
            pair_name(r) == "control-plane -> worker-1 legacy"
                && r["signal"] == "mtu"
                && r["mtu"]["icmp_next_hop"] == 1350
        })?;
        let said = mtu::gate_says(&reading, "control-plane");
        said.iter()
            .any(|b| b.contains(" in_node: ") && b.ends_with(mtu::ROUTER_TOLD))
            .then(|| (row.clone(), said))
    });
    eprintln!("said from Prometheus after {took:?}: {said:#?}");
    // The dashboard's "where and why" panels show the same: the node's
    // drops by reason, the router's messages on the wire hop, the size.
    let panel = |title: &str| -> Vec<(Value, f64)> {
        let (_, expr) = dashboard_queries()
            .into_iter()
            .find(|(panel, _)| panel.starts_with(title))
            .unwrap_or_else(|| panic!("no panel {title:?}"));
        server.query(&expr, unix_now()).unwrap()
    };
    let shown = |title: &str, labels: &[(&str, &str)]| -> Option<f64> {
        let series = panel(title);
        let found = series
            .iter()
            .find(|(s, _)| labels.iter().all(|(k, v)| label(s, k) == *v));
        if found.is_none() {
            eprintln!("{title}: no {labels:?} yet in {series:?}");
        }
        found.map(|(_, value)| *value)
    };
    let (cp, w1) = (("node", "control-plane"), ("peer_node", "worker-1"));
    let wire = [cp, w1, ("overlay", "legacy"), ("hop", "wire")];
    let fits = [cp, w1, ("overlay", "legacy"), ("kind", "icmp")];
    within(Duration::from_secs(20), "the dashboard's panels", || {
        let dropped = shown("Dropped by the kernel", &[cp, ("reason", "NOT_SPECIFIED")])?;
        let told = shown("ICMP fragmentation-needed", &wire)?;
        let size = shown("What fits", &fits)?;
        (dropped > 0.0 && told > 0.0 && size == 1350.0).then_some(())
    });
    drop(streams);
    // Nothing probed: the traffic's messages alone, no loss of their own.
    assert!(row["mtu"]["icmp_frag_needed"].as_u64() >= Some(1), "{row}");
    assert_eq!(
        (row["sent"].as_u64(), row["lost"].as_u64()),
        (Some(0), Some(0)),
        "{row}"
    );
    // Only the control plane's pair to worker-1 was told anything.
    for b in &said {
        if b.ends_with(mtu::ROUTER_TOLD) {
            assert!(
                b.starts_with("control-plane -> worker-1 overlay legacy "),
                "{b}"
            );
        }
    }
    drop(server);
    drop(agents);
    std::fs::remove_dir_all(&dir).unwrap();
}
