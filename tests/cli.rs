//! The `crossover` binary itself (root): clear errors for bad flags, a
//! missing interface or a bad shape, and a clean detach on SIGTERM.
use std::{
    path::PathBuf,
    process::{Command, Output, Stdio},
    time::Duration,
};

use crossover_tests::{
    netns::{TwoNodes, in_netns},
    require_root,
};

/// target/<profile>/crossover, built by `cargo test --workspace`.
fn crossover() -> PathBuf {
    let bin = std::env::current_exe()
        .unwrap()
        .parent()
        .unwrap()
        .parent()
        .unwrap()
        .join("crossover");
    assert!(
        bin.exists(),
        "{} missing: run the tests with `cargo xtask test`",
        bin.display()
    );
    bin
}

fn run(args: &[&str]) -> Output {
    Command::new(crossover()).args(args).output().unwrap()
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

#[test]
fn bad_flags_are_named() {
    let out = run(&["observe", "--iface", "eth0"]);
    assert!(!out.status.success());
    assert!(
        stderr(&out)
            .contains("cannot tell the hook of \"eth0\" from its name; write eth0=underlay"),
        "{}",
        stderr(&out)
    );
    let out = run(&["observe", "--iface", "eth0=sideways"]);
    assert!(
        stderr(&out).contains("unknown hook \"sideways\""),
        "{}",
        stderr(&out)
    );
    let out = run(&["observe", "--iface", "averyveryverylongname=underlay"]);
    assert!(
        stderr(&out).contains("is not a valid interface name"),
        "{}",
        stderr(&out)
    );
    let out = run(&["observe"]);
    assert!(
        stderr(&out).contains("nothing to observe: give --iface or --follow"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn a_bad_shape_file_is_named() {
    let path =
        std::env::temp_dir().join(format!("crossover-bad-shape-{}.json", std::process::id()));
    std::fs::write(&path, r#"{"networks": [], "nodes": [{"name": ""}]}"#).unwrap();
    let out = run(&["observe", "--follow", "--shape", path.to_str().unwrap()]);
    let _ = std::fs::remove_file(&path);
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains(path.to_str().unwrap()) && err.contains("missing field `underlay`"),
        "{err}"
    );
}

#[test]
fn missing_interface_and_clean_exit_on_sigterm() {
    require_root();
    let nodes = TwoNodes::new();
    let out = run(&[
        "observe",
        "--netns",
        &nodes.a.name,
        "--iface",
        "nosuch0=underlay",
    ]);
    assert!(
        stderr(&out).contains("interface \"nosuch0\" does not exist"),
        "{}",
        stderr(&out)
    );

    let child = Command::new(crossover())
        .args([
            "observe",
            "--netns",
            &nodes.a.name,
            "--iface",
            "u0=underlay",
            "--follow",
        ])
        .args(["--format", "json", "--interval", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let ns = nodes.a.name.clone();
    let attached = || {
        let ns = ns.clone();
        in_netns(&ns, || {
            ["u0", "flannel.1", "cilium_vxlan"]
                .into_iter()
                .map(|dev| {
                    [
                        aya::programs::TcAttachType::Ingress,
                        aya::programs::TcAttachType::Egress,
                    ]
                    .into_iter()
                    .map(|t| {
                        aya::programs::SchedClassifier::query_tcx(dev, t)
                            .map_or(0, |(_, p)| p.len())
                    })
                    .sum::<usize>()
                })
                .sum::<usize>()
        })
    };
    let mut waited = 0;
    while attached() < 6 {
        assert!(waited < 100, "crossover did not attach within 10 s");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    // A pod veth created now is picked up by the running agent's link events.
    nodes.a.exec(&[
        "ip", "link", "add", "veth9pod", "type", "veth", "peer", "eth9",
    ]);
    let veth_attached = || {
        in_netns(&nodes.a.name.clone(), || {
            aya::programs::SchedClassifier::query_tcx(
                "veth9pod",
                aya::programs::TcAttachType::Ingress,
            )
            .map_or(0, |(_, p)| p.len())
        })
    };
    let mut waited = 0;
    while veth_attached() == 0 {
        assert!(waited < 50, "the new veth was not attached within 5 s");
        std::thread::sleep(Duration::from_millis(100));
        waited += 1;
    }
    // SAFETY: plain kill(2) on our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(attached(), 0, "programs left behind after SIGTERM");
    let snapshot: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("final snapshot is JSON");
    assert!(snapshot["counters"]["seen_underlay"].is_u64());
    assert!(stderr(&out).contains("crossover: detached"));
    assert_eq!(veth_attached(), 0);
}

#[test]
fn without_privilege_the_error_says_so() {
    require_root();
    // Drop to nobody with no capabilities, as a user without root would run it.
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(crossover())
        .args(["observe", "--follow"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("permission denied while creating BPF maps: crossover needs root or CAP_BPF"),
        "{err}"
    );
}

/// Serves `bodies[path]` to every GET on 127.0.0.1 until the process ends;
/// returns its base URL. Enough HTTP for ureq.
fn canned_agent(bodies: Vec<(&'static str, String)>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut lines = BufReader::new(stream.try_clone().unwrap()).lines();
            let request = lines.next().and_then(|l| l.ok()).unwrap_or_default();
            while let Some(Ok(line)) = lines.next() {
                if line.is_empty() {
                    break;
                }
            }
            let path = request.split(' ').nth(1).unwrap_or("");
            let (status, body) = match bodies.iter().find(|(p, _)| *p == path) {
                Some((_, body)) => ("200 OK", body.clone()),
                None => ("404 Not Found", String::new()),
            };
            let _ = write!(
                stream,
                "HTTP/1.1 {status}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
                body.len()
            );
        }
    });
    url
}

fn loss_report(node: &str, version: u32, unreachable: &[&str], rows: serde_json::Value) -> String {
    serde_json::json!({
        "version": version,
        "node": node,
        "window_seconds": 10.0,
        "rows": rows,
        "unreachable": unreachable,
    })
    .to_string()
}

fn row(node: &str, peer: &str, signal: &str, sent: u64, lost: u64) -> serde_json::Value {
    serde_json::json!({
        "node": node, "peer_node": peer, "overlay": "cilium", "src_net": "legacy",
        "dst_net": "cilium", "signal": signal, "sent": sent, "lost": lost, "seconds": 10.0,
    })
}

#[test]
fn gather_merges_every_agent_and_names_what_is_missing() {
    use observer::cli::loss::{FailedAgent, Unreachable, gather};
    let a = canned_agent(vec![(
        "/api/v1/loss",
        loss_report(
            "a",
            1,
            &["c"],
            serde_json::json!([row("a", "b", "delivery", 100, 3)]),
        ),
    )]);
    let b = canned_agent(vec![(
        "/api/v1/loss",
        loss_report(
            "b",
            1,
            &[],
            serde_json::json!([
                row("b", "a", "delivery", 50, 0),
                row("b", "a", "probe_udp", 20, 1)
            ]),
        ),
    )]);
    let b_again = canned_agent(vec![(
        "/api/v1/loss",
        loss_report(
            "b",
            1,
            &[],
            serde_json::json!([row("b", "a", "delivery", 50, 0)]),
        ),
    )]);
    let future = canned_agent(vec![(
        "/api/v1/loss",
        loss_report("d", 2, &[], serde_json::json!([])),
    )]);
    let dead = "http://127.0.0.1:9".to_string();
    let agents = vec![
        a.clone(),
        b.clone(),
        b_again.clone(),
        future.clone(),
        dead.clone(),
    ];
    let matrix = gather(&agents, Duration::from_secs(2));
    let rows: Vec<_> = matrix
        .rows
        .iter()
        .map(|r| {
            (
                r.node.as_str(),
                r.peer_node.as_str(),
                r.signal.as_str(),
                r.sent,
                r.lost,
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            ("a", "b", "delivery", 100, 3),
            ("b", "a", "delivery", 50, 0),
            ("b", "a", "probe_udp", 20, 1),
        ],
        "every answering node once, sorted"
    );
    assert_eq!(
        matrix.unreachable,
        [Unreachable {
            node: "a".into(),
            peer_node: "c".into()
        }]
    );
    let failed: Vec<&FailedAgent> = matrix.failed.iter().collect();
    assert_eq!(failed.len(), 3, "{failed:#?}");
    assert_eq!(failed[0].agent, b_again);
    assert!(
        failed[0].error.contains("already answered by"),
        "{failed:#?}"
    );
    assert_eq!(failed[1].agent, future);
    assert!(
        failed[1].error.contains("speaks API version 2, not 1"),
        "{failed:#?}"
    );
    assert_eq!(failed[2].agent, dead);
    assert!(failed[2].error.contains("/api/v1/loss"), "{failed:#?}");
    assert!(!matrix.complete());

    // The binary: the same matrix as JSON, and exit 2 for what is missing.
    let out = run(&["loss", "--format", "json", "--agent", &a, "--agent", &b]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["rows"].as_array().unwrap().len(), 3, "{json:#}");
    assert_eq!(json["unreachable"][0]["peer_node"], "c", "{json:#}");
    let out = run(&["loss", "--agent", &b]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table.lines().any(|l| l.starts_with("b ")
            && l.contains("probe_udp")
            && l.contains(" 20 ")
            && l.ends_with("5.000%")),
        "{table}"
    );
}

#[test]
fn loss_names_an_agent_that_does_not_answer() {
    let dead = "http://127.0.0.1:9";
    let out = run(&["loss", "--timeout", "1", "--agent", dead]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(
        table
            .lines()
            .any(|l| l.starts_with(&format!("failed: {dead} did not answer"))),
        "{table}"
    );
    let out = run(&[
        "loss",
        "--timeout",
        "1",
        "--format",
        "json",
        "--agent",
        dead,
    ]);
    assert_eq!(out.status.code(), Some(2));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["failed"][0]["agent"], dead, "{json:#}");
    assert_eq!(json["rows"], serde_json::json!([]));
    // Since-start figures need every agent: an error naming it.
    let out = run(&["loss", "--since-start", "--timeout", "1", "--agent", dead]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(&format!("agent {dead}")),
        "{}",
        stderr(&out)
    );
}
