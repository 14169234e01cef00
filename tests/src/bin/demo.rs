//! The main job until the lab lands: two nodes in network namespaces, both
//! overlays of a migration between them, the real `crossover observe`
//! attached to node A, and traffic on both overlays for about 20 seconds.
use std::{
    net::UdpSocket,
    process::Command,
    time::{Duration, Instant},
};

use crossover_tests::{
    harness::two_node_shape,
    netns::{TwoNodes, in_netns},
};

const SECONDS: u64 = 20;

fn main() {
    crossover_tests::require_root();
    println!("== crossover demo ==");
    println!("Two nodes, A (192.168.50.1) and B (192.168.50.2), as network namespaces joined");
    println!("by a veth 'underlay'. Each runs both overlays of a CNI migration to Cilium:");
    println!("  legacy  flannel.1     VXLAN UDP 8472, pods in 10.244.0.0/16");
    println!("  cilium  cilium_vxlan  VXLAN UDP 8473, pods in 10.245.0.0/16");
    println!("crossover is attached to A's underlay and overlay devices for {SECONDS} s while A");
    println!("sends UDP to B on both overlays. Every 5 s it prints what it counted: per peer");
    println!(
        "node and overlay, packets sent; per flow, where it was seen and how it is classified.\n"
    );

    let nodes = TwoNodes::new();
    let shape_path =
        std::env::temp_dir().join(format!("crossover-demo-{}.json", std::process::id()));
    std::fs::write(
        &shape_path,
        serde_json::to_string_pretty(&two_node_shape()).unwrap(),
    )
    .unwrap();
    let crossover = std::env::current_exe().unwrap().with_file_name("crossover");
    let mut child = Command::new(&crossover)
        .args([
            "observe",
            "--netns",
            &nodes.a.name,
            "--iface",
            "u0=underlay",
            "--follow",
        ])
        .args(["--shape", shape_path.to_str().unwrap()])
        .args(["--duration", &SECONDS.to_string(), "--interval", "5"])
        .spawn()
        .unwrap_or_else(|e| {
            panic!(
                "starting {}: {e} (run `cargo xtask demo`)",
                crossover.display()
            )
        });
    std::thread::sleep(Duration::from_secs(1));

    // Node B listens on both overlays, so every datagram has a taker.
    let listeners = in_netns(&nodes.b.name, || {
        [
            UdpSocket::bind("10.244.1.0:9000").unwrap(),
            UdpSocket::bind("10.245.1.1:9000").unwrap(),
        ]
    });
    let (legacy, cilium) = in_netns(&nodes.a.name, move || {
        let legacy = UdpSocket::bind("10.244.0.0:0").unwrap();
        let cilium = UdpSocket::bind("10.245.0.1:0").unwrap();
        let start = Instant::now();
        let (mut sent_legacy, mut sent_cilium) = (0u64, 0u64);
        while start.elapsed() < Duration::from_secs(SECONDS - 3) {
            legacy.send_to(b"legacy", "10.244.1.0:9000").unwrap();
            sent_legacy += 1;
            if sent_legacy % 2 == 0 {
                cilium.send_to(b"cilium", "10.245.1.1:9000").unwrap();
                sent_cilium += 1;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        (sent_legacy, sent_cilium)
    });
    let status = child.wait().unwrap();
    drop(listeners);
    let _ = std::fs::remove_file(&shape_path);
    println!(
        "The generator sent {legacy} datagrams on the legacy overlay and {cilium} on the Cilium one;"
    );
    println!("the 'sent' rows for node-b above should show the same numbers.");
    drop(nodes);
    assert!(status.success(), "crossover exited with {status}");
    println!("Lab removed.");
}
