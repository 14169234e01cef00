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
