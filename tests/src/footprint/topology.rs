//! The namespaces of one case and the cluster shape the agent is given.
use std::{fs, net::Ipv4Addr, path::PathBuf};

use serde_json::{Value, json};

use crate::netns::{Netns, sh, unique};

/// Node i's underlay: 192.168.(50 + i/250).(i%250 + 1); node 0 is the
/// agent's (192.168.50.1), node 1 the sink's (192.168.50.2). Up to 10,250
/// nodes.
pub fn underlay(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50 + (i / 250) as u8, (i % 250 + 1) as u8)
}

/// The legacy and the Cilium networks, a /24 for each of up to 16,384
/// nodes.
pub const LEGACY: &str = "10.64.0.0/10";
pub const CILIUM: &str = "10.128.0.0/10";
const LEGACY_BASE: usize = 64;
const CILIUM_BASE: usize = 128;

/// Node i's /24 of a network (base: the network's second octet): node 0
/// owns the pod's 10.64.0.0/24, node 1 10.64.1.0/24, the traffic's
/// destination.
pub fn pod_cidr(base: usize, i: usize) -> String {
    format!("10.{}.{}.0/24", base + i / 256, i % 256)
}

/// An address in node i's legacy /24.
pub fn legacy_pod(i: usize, host: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, (LEGACY_BASE + i / 256) as u8, (i % 256) as u8, host)
}

/// Node i's `flannel.1` address (the network address of its legacy /24)
/// and its `cilium_host` address (.1 of its Cilium /24): what the agent
/// probes, with the probe case's shape.
pub fn overlay_addrs(i: usize) -> [Ipv4Addr; 2] {
    let (hi, lo) = ((i / 256) as u8, (i % 256) as u8);
    [
        Ipv4Addr::new(10, LEGACY_BASE as u8 + hi, lo, 0),
        Ipv4Addr::new(10, CILIUM_BASE as u8 + hi, lo, 1),
    ]
}

/// What a probe case adds: every node's overlay addresses (the sink owns
/// them all and answers there), and the node under migration, for a
/// binary whose shape knows `migrating`.
#[derive(Clone, Debug, Default)]
pub struct Probed {
    pub migrating: Option<String>,
}

/// The legacy network routed (native), so the underlay counts per-peer
/// slots of the pod traffic; Cilium on VXLAN 8473.
pub fn shape(nodes: usize, probed: Option<&Probed>) -> Value {
    let nodes: Vec<Value> = (0..nodes)
        .map(|i| {
            let mut node = json!({
                "name": format!("node-{i}"),
                "underlay": underlay(i).to_string(),
                "pod_cidrs": [
                    { "role": "legacy", "cidr": pod_cidr(LEGACY_BASE, i) },
                    { "role": "cilium", "cidr": pod_cidr(CILIUM_BASE, i) },
                ],
            });
            if probed.is_some() {
                let addrs: Vec<String> = overlay_addrs(i).iter().map(|a| a.to_string()).collect();
                node["overlay_addrs"] = json!(addrs);
            }
            node
        })
        .collect();
    let mut shape = json!({
        "local_node": "node-0",
        "networks": [
            { "role": "legacy", "cidrs": [LEGACY], "encapsulation": "native" },
            { "role": "cilium", "cidrs": [CILIUM], "encapsulation": { "vxlan": { "port": 8473 } } },
        ],
        "nodes": nodes,
    });
    if let Some(node) = probed.and_then(|p| p.migrating.as_ref()) {
        shape["migrating"] = json!([node]);
    }
    shape
}

/// The three namespaces of a case and the directory holding the shape and
/// the agent's log; all removed on drop (fields drop in order: the
/// namespaces, then the directory).
pub struct Lab {
    pub agent: Netns,
    pub sink: Netns,
    pub pod: Netns,
    pub dir: TempDir,
    pub shape: PathBuf,
}

impl Lab {
    pub fn new(nodes: usize) -> Self {
        Self::with(nodes, None)
    }

    /// With `probed`, the shape has every node's overlay addresses and the
    /// sink owns them (no pod traffic then: the pod's destinations would
    /// be the sink's too).
    pub fn with(nodes: usize, probed: Option<&Probed>) -> Self {
        let dir = TempDir::create();
        let shape = dir.0.join("shape.json");
        fs::write(
            &shape,
            serde_json::to_vec_pretty(&self::shape(nodes, probed)).unwrap(),
        )
        .expect("write shape");
        let lab = Lab {
            agent: Netns::new("scagent"),
            sink: Netns::new("scsink"),
            pod: Netns::new("scpod"),
            dir,
            shape,
        };
        for ns in [&lab.agent, &lab.sink, &lab.pod] {
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.all.disable_ipv6=1"]);
            ns.exec(&["sysctl", "-qw", "net.ipv6.conf.default.disable_ipv6=1"]);
        }
        let (agent, sink, pod) = (&lab.agent.name, &lab.sink.name, &lab.pod.name);
        sh(&[
            "ip", "link", "add", "eth0", "netns", agent, "type", "veth", "peer", "eth0", "netns",
            sink,
        ]);
        sh(&[
            "ip",
            "link",
            "add",
            "vethscale0",
            "netns",
            agent,
            "type",
            "veth",
            "peer",
            "eth0",
            "netns",
            pod,
        ]);

        let a = &lab.agent;
        a.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=1"]);
        a.exec(&["ip", "addr", "add", "192.168.50.1/24", "dev", "eth0"]);
        a.exec(&["ip", "link", "set", "eth0", "up"]);
        a.exec(&["ethtool", "-K", "eth0", "tso", "off"]);
        a.exec(&["ip", "addr", "add", "10.64.0.1/24", "dev", "vethscale0"]);
        a.exec(&["ip", "link", "set", "vethscale0", "up"]);
        for net in [LEGACY, CILIUM, "192.168.0.0/16"] {
            a.exec(&[
                "ip",
                "route",
                "add",
                net,
                "via",
                "192.168.50.2",
                "dev",
                "eth0",
            ]);
        }

        let s = &lab.sink;
        s.exec(&["sysctl", "-qw", "net.ipv4.ip_forward=0"]);
        s.exec(&["ip", "addr", "add", "192.168.50.2/24", "dev", "eth0"]);
        s.exec(&["ip", "link", "set", "eth0", "up"]);
        // The sink's stack in a NAPI thread of its own, as another
        // machine's is: a veth otherwise runs the receiver's whole stack
        // for each packet inside the sender's send (its softirq at the
        // sender's bottom-half enable, charged to the sender's system
        // time on kernels without IRQ time accounting), which a NIC's
        // peer never costs the agent. The veth takes the NAPI path with
        // GRO on at the sink and TSO off at the agent (a local socket's
        // packet is not GRO-eligible from a TSO device).
        s.exec(&["ethtool", "-K", "eth0", "gro", "on"]);
        s.exec(&["sh", "-c", "echo 1 > /sys/class/net/eth0/threaded"]);
        // Every other peer's underlay is the sink's too, so the agent's
        // reads of its peers' APIs are refused at once (nothing listens)
        // rather than left to time out.
        let mut local: Vec<String> = ["3/32", "4/30", "8/29", "16/28", "32/27", "64/26", "128/25"]
            .iter()
            .map(|p| format!("192.168.50.{p}"))
            .collect();
        if nodes > 250 {
            local.extend(
                (51..=underlay(nodes - 1).octets()[2]).map(|o| format!("192.168.{o}.0/24")),
            );
        }
        if probed.is_some() {
            local.extend([LEGACY.into(), CILIUM.into()]);
        }
        for net in &local {
            s.exec(&["ip", "route", "add", "local", net, "dev", "lo"]);
        }

        let p = &lab.pod;
        p.exec(&["ip", "addr", "add", "10.64.0.7/24", "dev", "eth0"]);
        p.exec(&["ip", "link", "set", "eth0", "up"]);
        p.exec(&["ip", "route", "add", "default", "via", "10.64.0.1"]);
        // Neighbours resolved before the agent starts.
        p.exec(&["ping", "-c1", "-W2", "10.64.0.1"]);
        a.exec(&["ping", "-c1", "-W2", "192.168.50.2"]);
        lab
    }
}

/// A directory under the system's temporary directory, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    fn create() -> Self {
        let path = std::env::temp_dir().join(unique("crossover-scale-"));
        fs::create_dir_all(&path).expect("temporary directory");
        TempDir(path)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
