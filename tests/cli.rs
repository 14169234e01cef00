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
    for (args, says) in [
        (
            &[
                "observe",
                "--follow",
                "--duration",
                "1",
                "--flow-capacity",
                "0",
            ][..],
            "invalid value '0' for '--flow-capacity <FLOW_CAPACITY>': 0 is not in 1..=16777216",
        ),
        (
            &["agent", "--flow-capacity", "0"][..],
            "invalid value '0' for '--flow-capacity <FLOW_CAPACITY>'",
        ),
        (
            &["agent", "--peer-slot-capacity", "4294967295"][..],
            "4294967295 is not in 1..=262144",
        ),
        (
            &[
                "loss",
                "--agent",
                "http://127.0.0.1:1",
                "--timeout",
                "100000000y",
            ][..],
            "\"100000000y\": at most 30 days",
        ),
        (
            &["agent", "--flow-idle-tcp", "31d"][..],
            "\"31d\": at most 30 days",
        ),
        (
            &[
                "observe",
                "--follow",
                "--duration",
                "1",
                "--addr-capacity",
                "1",
            ][..],
            "--addr-capacity 1 is below the 2 address ranges this shape needs",
        ),
        (
            &[
                "observe",
                "--follow",
                "--duration",
                "1",
                "--follow-pattern",
                "cali*",
            ][..],
            "expected GLOB=HOOK (e.g. 'cali*=pod') or GLOB=none",
        ),
    ] {
        let out = run(args);
        assert!(!out.status.success(), "{args:?}");
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
    }
    let out = run(&["observe", "--follow", "--peer", "nosuch"]);
    assert!(
        stderr(&out).contains("--peer nosuch: no node of that name in the shape"),
        "{}",
        stderr(&out)
    );
    let out = run(&["observe", "--follow", "--point", "sideways"]);
    assert!(
        stderr(&out).contains("\"sideways\" is not a hook point"),
        "{}",
        stderr(&out)
    );
}

/// One duration syntax for every flag: humantime's, or bare seconds where
/// a flag took integer seconds; `-o` with `--format` as its alias.
#[test]
fn durations_and_output_flags_read_alike_everywhere() {
    // clap validates every value before the trailing --help stops it.
    let accepts = |args: &[&str]| {
        let out = Command::new(crossover())
            .args(args)
            .arg("--help")
            .output()
            .unwrap();
        out.status
            .success()
            .then_some(())
            .ok_or_else(|| stderr(&out))
    };
    for args in [
        &["agent", "--flow-idle-tcp", "10m"][..],
        &["agent", "--flow-idle-tcp", "600"],
        &[
            "agent",
            "--flow-idle-closed",
            "1h 30m",
            "--flow-sweep-interval",
            "0",
        ],
        &["observe", "--interval", "1m", "--duration", "90"],
        &[
            "loss",
            "--window",
            "1m",
            "--timeout",
            "1500ms",
            "-o",
            "wide",
        ],
        &["loss", "--format", "json"],
        &["observe", "-o", "json"],
        &["migrate", "--drain-timeout", "1h", "status", "-o", "json"],
        &["migrate", "status", "--format", "markdown"],
        &[
            "migrate",
            "run",
            "--soak",
            "2m",
            "--consecutive-breaches",
            "3",
            "--hard-ceiling",
            "off",
        ],
    ] {
        accepts(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    }
    let err = accepts(&["agent", "--flow-idle-tcp", "10 parsecs"]).unwrap_err();
    assert!(
        err.contains("--flow-idle-tcp") && err.contains("unknown time unit"),
        "{err}"
    );
    let err = accepts(&["loss", "-o", "yaml"]).unwrap_err();
    assert!(err.contains("table, wide, json"), "{err}");
    let err = accepts(&["migrate", "run", "--hard-ceiling", "lots"]).unwrap_err();
    assert!(err.contains("or off"), "{err}");
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
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        stdout.lines().count(),
        1,
        "one snapshot, one line: {stdout}"
    );
    let snapshot: serde_json::Value =
        serde_json::from_str(&stdout).expect("final snapshot is JSON");
    assert!(snapshot["counters"]["seen_underlay"].is_u64());
    // Wall-clock times beside the kernel's boot-relative ones, within the
    // run's minutes.
    let started = snapshot["started"].as_str().unwrap();
    let started = humantime::parse_rfc3339(started).unwrap();
    let age = std::time::SystemTime::now()
        .duration_since(started)
        .unwrap();
    assert!(age < Duration::from_secs(600), "{age:?}");
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
            let path = path.split('?').next().unwrap_or("");
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

/// A simulated fleet on its own runtime, for the binary to read.
fn simulated(model: crossover_tests::simulated_agents::Model) -> Vec<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let fleet = crossover_tests::simulated_agents::SimulatedAgents::start(model)
                .await
                .unwrap();
            tx.send(fleet.urls.clone()).unwrap();
            std::future::pending::<()>().await
        })
    });
    rx.recv().unwrap()
}

#[test]
fn loss_reads_every_agent_once_and_names_what_is_missing() {
    use crossover_tests::simulated_agents::{Fault, Model};
    use observer_ebpf::Overlay;
    let urls = simulated(Model {
        nodes: 30,
        faults: vec![Fault {
            from: 4,
            to: 5,
            overlay: Overlay::Cilium,
            ratio: 0.2,
        }],
        ..Model::default()
    });
    let future = canned_agent(vec![(
        "/api/v1/reading",
        serde_json::json!({"version": 2}).to_string(),
    )]);
    let dead = "http://127.0.0.1:9".to_string();
    let mut args = vec!["loss", "-o", "json"];
    for u in &urls {
        args.extend(["--agent", u]);
    }
    // The default view: totals, and the pair the drill-down names.
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["answered"], 30, "{json:#}");
    let rows = json["rows"].as_array().unwrap();
    assert_eq!(
        rows.len(),
        1,
        "only the faulted pair lost anything: {json:#}"
    );
    assert_eq!(
        (&rows[0]["node"], &rows[0]["peer_node"], &rows[0]["overlay"]),
        (&"node-00004".into(), &"node-00005".into(), &"cilium".into())
    );
    // The ratio is in the JSON; the window's end is a wall-clock time.
    let ratio = rows[0]["ratio"].as_f64().unwrap();
    assert!((ratio - 0.2).abs() < 0.02, "{:#}", rows[0]);
    let lost = rows[0]["lost"].as_f64().unwrap() / rows[0]["sent"].as_f64().unwrap();
    assert_eq!(ratio, lost);
    let end = json["window_end"].as_str().unwrap();
    assert!(
        end.len() == 24 && end.as_bytes()[10] == b'T' && end.ends_with('Z'),
        "RFC 3339 UTC: {end}"
    );
    // The table names its columns as the JSON does; wide adds the rest.
    for (output, extra) in [("table", false), ("wide", true)] {
        let mut table = vec!["loss", "-o", output];
        for u in &urls {
            table.extend(["--agent", u]);
        }
        let out = run(&table);
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let text = String::from_utf8_lossy(&out.stdout);
        let header: Vec<&str> = text.lines().nth(1).unwrap().split_whitespace().collect();
        let mut expected = vec![
            "node",
            "peer_node",
            "overlay",
            "src_net",
            "dst_net",
            "signal",
            "sent",
            "lost",
            "ratio",
        ];
        if extra {
            expected.extend(["refused", "seconds"]);
        }
        assert_eq!(header, expected, "{text}");
        let faulted = text
            .lines()
            .find(|l| l.starts_with("node-00004"))
            .unwrap_or_else(|| panic!("{text}"));
        assert_eq!(faulted.split_whitespace().count(), expected.len(), "{text}");
    }
    // --all: every row, one JSON document a line, streamed group by group.
    let mut all = vec!["loss", "--all", "-o", "json"];
    for u in &urls {
        all.extend(["--agent", u]);
    }
    let out = run(&all);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows: Vec<serde_json::Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let pairs = rows.iter().filter(|r| r["node"] != "*").count();
    assert_eq!(pairs, 30 * 8 * 2, "every pair both ways, both overlays");
    let lost: Vec<_> = rows
        .iter()
        .filter(|r| r["lost"].as_u64() > Some(0))
        .collect();
    assert!(
        lost.iter()
            .any(|r| r["node"] == "node-00004" && r["peer_node"] == "node-00005"),
        "{lost:?}"
    );
    // Filters, and the table's missing pieces with exit 2: a duplicate
    // URL for one node, an agent of another version, one that is gone.
    args.truncate(1);
    for u in &urls {
        args.extend(["--agent", u]);
    }
    args.extend(["--agent", &urls[3], "--agent", &future, "--agent", &dead]);
    args.extend([
        "--timeout",
        "2s",
        "--node",
        "node-00007",
        "--overlay",
        "legacy",
    ]);
    let out = run(&args);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines.iter().any(|l| l.split_whitespace().take(3).eq([
            "node-00007",
            "node-00008",
            "legacy"
        ])),
        "{table}"
    );
    assert!(
        !lines
            .iter()
            .filter(|l| l.starts_with("node-") || l.starts_with("(cluster)"))
            .any(|l| l.split_whitespace().nth(2) == Some("cilium")),
        "rows filtered to legacy: {table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("failed: {}: ", urls[3]))
                && l.contains("already answered by")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("failed: {future}")) && l.contains("version")),
        "{table}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with(&format!("failed: {dead}: ")) && l.contains("did not answer")),
        "{table}"
    );
}

/// An agent reporting blind pod hooks: `crossover loss` names them above
/// the rows, says what they mean for the node's rows, and carries them in
/// its JSON by hook and direction; the nodes without any are not named.
#[test]
fn loss_names_blind_hooks_above_the_rows() {
    use crossover_tests::simulated_agents::Model;
    use observer::{
        datapath::{Hook, HookOrder},
        loss::blind::BlindHooks,
    };
    use observer_ebpf::Direction;
    let order: Vec<HookOrder> = (0..3)
        .map(|i| {
            let iface = format!("lxc12ab{i}");
            HookOrder::from_ahead(&iface, Hook::Pod, Direction::Ingress, Some(vec![123]))
        })
        .collect();
    let urls = simulated(Model {
        nodes: 3,
        blind: vec![(1, BlindHooks::of(&order))],
        ..Model::default()
    });
    let mut args = vec!["loss"];
    for u in &urls {
        args.extend(["--agent", u]);
    }
    let out = run(&args);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(
        lines[1],
        "blind: node-00001: 3 pod hooks (ingress) blind; lxc12ab0 ingress: programs [123] run \
         first, lxc12ab1 ingress: programs [123] run first, lxc12ab2 ingress: programs [123] run \
         first; their counts are not what crossed them",
        "{text}"
    );
    assert!(
        lines[2].contains("node-00001: its loss rows are counted on its underlay"),
        "{text}"
    );
    assert!(lines[3].starts_with("node "), "the rows follow: {text}");
    assert!(!text.contains("node-00000:") && !text.contains("node-00002:"));

    args.extend(["-o", "json"]);
    let out = run(&args);
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let blind = json["blind"].as_array().unwrap();
    assert_eq!(blind.len(), 1, "{json:#}");
    assert_eq!(blind[0]["node"], "node-00001");
    assert_eq!(
        blind[0]["counts"],
        serde_json::json!([{"hook": "pod", "direction": "ingress", "blind": 3}])
    );
    assert_eq!(blind[0]["named"][0]["iface"], "lxc12ab0");
    assert_eq!(blind[0]["named"][0]["ahead"], serde_json::json!([123]));
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
            .any(|l| l.starts_with(&format!("failed: {dead}: ")) && l.contains("did not answer")),
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

/// A local server answering every request with `response`, then closing.
fn canned(response: &'static str) -> String {
    use std::io::{Read, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut request = Vec::new();
            let mut buf = [0; 1024];
            while !request.ends_with(b"\r\n\r\n") {
                match stream.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => request.extend_from_slice(&buf[..n]),
                }
            }
            let _ = stream.write_all(response.as_bytes());
        }
    });
    url
}

/// An agent address that redirects, or answers with something that is no
/// reading, is named for what it did, not as silent: a redirect is not
/// followed (it would send the reading elsewhere), junk is not a reading.
/// And a zero timeout is refused before any request.
#[test]
fn loss_names_redirects_and_junk_for_what_they_are() {
    let moved = canned(
        "HTTP/1.1 302 Found\r\nLocation: http://192.0.2.1:9190/\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
    );
    let junk = canned(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 5\r\nConnection: close\r\n\r\nhello",
    );
    let out = run(&[
        "loss",
        "--timeout",
        "2s",
        "--agent",
        &moved,
        "--agent",
        &junk,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let table = String::from_utf8_lossy(&out.stdout);
    let line = |agent: &str| {
        table
            .lines()
            .find(|l| l.starts_with(&format!("failed: {agent}: ")))
            .unwrap_or_else(|| panic!("{agent} not named: {table}"))
            .to_owned()
    };
    let moved_line = line(&moved);
    assert!(
        moved_line.contains("302 Found to http://192.0.2.1:9190/: redirects are not followed"),
        "{moved_line}"
    );
    let junk_line = line(&junk);
    assert!(junk_line.contains("is not a v1 reading"), "{junk_line}");
    for l in [&moved_line, &junk_line] {
        assert!(!l.contains("did not answer"), "{l}");
    }
    let out = run(&["loss", "--timeout", "0", "--agent", &junk]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("must be more than zero"),
        "{}",
        stderr(&out)
    );
}

/// Without --agent, `loss` finds the agents through the cluster's API, as
/// the driver does: one per node from the agent pods (here the fake API
/// server's, their addresses the simulated agents'), and names a node
/// without one, exit 2: a node nobody measured is not lossless.
#[test]
fn loss_finds_the_agents_through_the_kubeconfig() {
    use crossover_tests::{
        apiserver::{
            FakeApiServer,
            fixtures::{self, Owner, PodBuilder},
        },
        simulated_agents::{Fault, Model},
    };
    use observer_ebpf::Overlay;
    let port = std::net::TcpListener::bind((Model::address(0), 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    simulated(Model {
        nodes: 3,
        port: Some(port),
        faults: vec![Fault {
            from: 1,
            to: 2,
            overlay: Overlay::Cilium,
            ratio: 0.2,
        }],
        ..Model::default()
    });
    let server = FakeApiServer::start().unwrap();
    let mut objects = fixtures::cluster(4, 0);
    objects.push(fixtures::namespace("crossover"));
    for i in 0..3 {
        let node = fixtures::node_name(i);
        objects.push(
            PodBuilder::new("crossover", &format!("crossover-agent-{node}"))
                .label("app.kubernetes.io/name", "crossover-agent")
                .node(&node, &Model::address(i).to_string())
                .ip(&Model::address(i).to_string())
                .host_network(true)
                .owner(Owner::DaemonSet("crossover-agent".into()))
                .value(),
        );
    }
    for o in objects {
        server.apply(o).unwrap();
    }
    let kubeconfig =
        std::env::temp_dir().join(format!("crossover-cli-kubeconfig-{}", std::process::id()));
    server.write_kubeconfig(&kubeconfig).unwrap();
    let kubeconfig = kubeconfig.to_str().unwrap();
    let port = port.to_string();
    let out = run(&[
        "loss",
        "-o",
        "json",
        "--kubeconfig",
        kubeconfig,
        "--agent-port",
        &port,
    ]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let unmeasured = format!("no crossover agent pod on node {}", fixtures::node_name(3));
    assert!(stderr(&out).contains(&unmeasured), "{}", stderr(&out));
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(json["answered"], 3, "{json:#}");
    assert_eq!(json["failed"], serde_json::json!([]), "{json:#}");
    let rows = json["rows"].as_array().unwrap();
    assert!(
        rows.iter()
            .any(|r| r["node"] == "node-00001" && r["peer_node"] == "node-00002"),
        "{json:#}"
    );
    // No agent pod at all: an error that says where it looked.
    let out = run(&[
        "loss",
        "--kubeconfig",
        kubeconfig,
        "--namespace",
        "elsewhere",
    ]);
    std::fs::remove_file(kubeconfig).unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains(
            "no pod matches app.kubernetes.io/name=crossover-agent in namespace elsewhere"
        ),
        "{}",
        stderr(&out)
    );
}
